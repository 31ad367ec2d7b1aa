"""Gradient all-reduce overlapped with the backward pass, for flat-mode optimizers.

Data-parallel training averages each gradient source (g_L, g_U) over the processes. Done at the
step, the all-reduce adds its whole time to the iteration; here it starts during the backward
pass instead, DDP-style. One tensor hook per parameter fires as autograd produces the
parameter's gradient (for ``torch.autograd.grad`` and ``.backward()`` alike) while the caller
collects a source (``with opt.collecting(source=0): ...``); the hook keeps the gradient, and
once every parameter of a bucket has one, the bucket's gradients are copied into its contiguous
slice of the source's flat buffer and that slice is all-reduced asynchronously. Buckets are
ranges of the flat layout of about ``bucket_mb``, formed from the end of the layout because
backward produces the last layers' gradients first. At the step, :meth:`GradientOverlap.finish`
launches the buckets still pending (with zeros for parameters that got no gradient) in bucket
order, waits for all, divides by the world size and hands the flat buffers to the step.

Assumption: every rank differentiates the same graph, so the hooks fire, and the buckets are
launched, in the same order on every rank (collectives must be issued in one order everywhere).
A rank whose graph differed (a parameter used on one rank only) would pair different buckets;
that cannot be seen locally without a host synchronisation, so it is documented, not checked.
What is checked: no bucket is launched twice, no gradient arrives after its bucket left, every
bucket is launched before the wait, and the step receives as many gradients as were collected.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor

from hco_cli.optim.flat import FlatLayout


@runtime_checkable
class BucketPolicy(Protocol):
    """What the overlap takes from a gradient reducer (``BucketedAllReduce``)."""

    world_size: int
    bucket_bytes: int


def flat_buckets(layout: FlatLayout, bucket_bytes: int) -> list[tuple[int, int, list[int]]]:
    """(start, end, parameter indices) per bucket, in launch order: from the end of the layout.

    Each bucket is a contiguous range of the buffer (alignment gaps included) of at most
    ``bucket_bytes``; a larger tensor forms a bucket of its own.
    """
    item = layout.data.element_size()
    out: list[tuple[int, int, list[int]]] = []
    end = layout.size
    members: list[int] = []
    for i in reversed(range(len(layout.params))):
        start = layout.offsets[i]
        if members and (end - start) * item > bucket_bytes:
            out.append((layout.offsets[members[-1]], end, members))
            end, members = layout.offsets[members[-1]], []
        members.append(i)
    if members:
        out.append((0, end, members))
    return out


@dataclass
class _Round:
    """One source's collection between two steps."""

    source: int
    grads: list[Tensor | None]
    missing: list[int]  # per bucket: hooked parameters still without a gradient
    launched: list[bool]
    order: list[int] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    arrived: int = 0
    early: int = 0  # buckets launched during the backward pass


def _on_grad(ref: weakref.ref[GradientOverlap], index: int, grad: Tensor) -> None:
    """The parameter hook: a weak reference, so a discarded optimizer's hooks do nothing."""
    overlap = ref()
    if overlap is not None and overlap._current is not None:
        overlap._arrive(overlap._current, index, grad)


class GradientOverlap:
    """Per-parameter hooks that all-reduce an optimizer's flat gradient buffers in buckets."""

    def __init__(self, layout: FlatLayout, buffers: Sequence[Tensor],
                 views: Sequence[Sequence[Tensor]], *, world_size: int,
                 bucket_bytes: int) -> None:
        self.world_size = world_size
        self._buffers = list(buffers)
        self._views = [list(v) for v in views]
        spans = flat_buckets(layout, bucket_bytes)
        self._buckets = [members for _, _, members in spans]
        self._slices = [[buffer[start:end] for start, end, _ in spans] for buffer in buffers]
        self._bucket_of = {i: b for b, members in enumerate(self._buckets) for i in members}
        hooked = [p.requires_grad for p in layout.params]
        self._expected = [sum(hooked[i] for i in members) for members in self._buckets]
        self._current: _Round | None = None
        self._rounds: dict[int, _Round] = {}
        self.last_overlap: dict[int, tuple[int, int]] = {}
        ref = weakref.ref(self)
        handles = [p.register_hook(partial(_on_grad, ref, i))
                   for i, p in enumerate(layout.params) if p.requires_grad]
        self._finalizer = weakref.finalize(self, _remove, handles)

    @property
    def buckets(self) -> int:
        """The number of buckets per source."""
        return len(self._buckets)

    def close(self) -> None:
        """Remove the hooks (a replaced reducer, or a discarded optimizer)."""
        self._finalizer()

    @contextmanager
    def collecting(self, source: int) -> Iterator[None]:
        """Gradients produced inside the block form gradient source ``source`` of the step."""
        if self._current is not None:
            raise RuntimeError(f"gradient source {self._current.source} is being collected; "
                               "collect one source at a time")
        if source in self._rounds:
            raise RuntimeError(f"gradient source {source} was already collected since the last "
                               "step; call the optimizer's step after each collection")
        self._current = self._rounds[source] = _Round(
            source, [None] * len(self._bucket_of), list(self._expected),
            [False] * len(self._buckets))
        try:
            yield
        except BaseException:
            self._abandon()
            raise
        finally:
            self._current = None

    def _arrive(self, rnd: _Round, index: int, grad: Tensor) -> None:
        bucket = self._bucket_of[index]
        previous = rnd.grads[index]
        if previous is None:
            rnd.grads[index] = grad
            rnd.arrived += 1
            rnd.missing[bucket] -= 1
            if rnd.missing[bucket] == 0:
                rnd.early += 1
                self._launch(rnd, bucket)
        elif rnd.launched[bucket]:
            raise RuntimeError(f"parameter {index} got a second gradient for source "
                               f"{rnd.source} after its bucket was all-reduced; collect each "
                               "gradient source in one backward pass")
        else:
            rnd.grads[index] = previous + grad

    def _launch(self, rnd: _Round, bucket: int) -> None:
        """Copy the bucket's gradients into its slice (zeros where absent) and all-reduce it."""
        if rnd.launched[bucket]:
            raise RuntimeError(f"bucket {bucket} of gradient source {rnd.source} was "
                               "all-reduced twice")
        views = self._views[rnd.source]
        members = self._buckets[bucket]
        present = [(views[i], g) for i in members if (g := rnd.grads[i]) is not None]
        if present:
            torch._foreach_copy_([v for v, _ in present], [g for _, g in present])
        if len(present) < len(members):
            torch._foreach_zero_([views[i] for i in members if rnd.grads[i] is None])
        rnd.handles.append(dist.all_reduce(self._slices[rnd.source][bucket], async_op=True))
        rnd.launched[bucket] = True
        rnd.order.append(bucket)

    def finish(self, given: Sequence[Sequence[Tensor | None]]) -> dict[int, Tensor | None]:
        """Complete the collected sources: {source: averaged flat buffer, or None if empty}.

        ``given`` are the per-parameter gradients handed to the step, per source; a collected
        source must have as many as were collected. Sources not collected are not in the result.
        """
        rounds = [self._rounds[s] for s in sorted(self._rounds)]
        self._rounds = {}
        for rnd in rounds:
            count = sum(g is not None for g in given[rnd.source])
            if count != rnd.arrived:
                _drain(rounds)
                raise RuntimeError(f"the step got {count} gradients for source {rnd.source} but "
                                   f"{rnd.arrived} were collected; step on the gradients "
                                   "computed inside opt.collecting(...)")
        out: dict[int, Tensor | None] = {}
        for rnd in rounds:
            if rnd.arrived == 0:  # nothing to reduce on any rank (same graph): source absent
                out[rnd.source] = None
                continue
            for bucket in range(len(self._buckets)):  # the fixed order, on every rank
                if not rnd.launched[bucket]:
                    self._launch(rnd, bucket)
            out[rnd.source] = self._buffers[rnd.source]
        self.last_overlap = {r.source: (r.early, len(r.order)) for r in rounds}
        for rnd in rounds:
            if sorted(rnd.order) != list(range(len(self._buckets))) and rnd.arrived:
                _drain(rounds)
                raise RuntimeError(f"buckets {rnd.order} of source {rnd.source} were launched; "
                                   f"expected each of {len(self._buckets)} once")
            for handle in rnd.handles:
                handle.wait()
            buffer = out[rnd.source]
            if buffer is not None:
                buffer.div_(self.world_size)
        return out

    def _abandon(self) -> None:
        """Forget this step's collection after an error, once its collectives are done."""
        _drain(list(self._rounds.values()))
        self._rounds = {}


def _drain(rounds: list[_Round]) -> None:
    for rnd in rounds:
        for handle in rnd.handles:
            handle.wait()
        rnd.handles.clear()


def _remove(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()


def overlap_for(reducer: object, layout: FlatLayout, buffers: Sequence[Tensor],
                views: Sequence[Sequence[Tensor]]) -> GradientOverlap | None:
    """The overlap for a flat optimizer given ``reducer``; None for one process or a reducer
    without a bucket policy (which keeps the reduce-at-the-step path)."""
    if not isinstance(reducer, BucketPolicy) or reducer.world_size <= 1:
        return None
    return GradientOverlap(layout, buffers, views, world_size=reducer.world_size,
                           bucket_bytes=reducer.bucket_bytes)


__all__ = ["BucketPolicy", "GradientOverlap", "flat_buckets", "overlap_for"]
