"""Gradient synchronisation for data-parallel training: an object the training loop owns.

The loop builds one :class:`GradientSync` per optimizer and closes it when the optimizer's
phase ends. While open, the optimizer averages each gradient source (g_L, then g_U) over the
processes with its reducer before any update, and a flat optimizer with a bucketed reducer has
backward hooks on its parameters that start those all-reduces during the backward pass
(:mod:`hco_cli.optim.overlap`); :meth:`GradientSync.close` removes the hooks and detaches it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from torch import Tensor

from hco_cli.optim.flat import FlatLayout
from hco_cli.optim.overlap import GradientOverlap, overlap_for

# Averages a list of gradient tensors across processes, in place.
GradientReducer = Callable[[list[Tensor]], None]


class Synchronised(Protocol):
    """What a GradientSync needs of its optimizer (``TwoSourceOptimizer`` provides it)."""

    @property
    def flat_layout(self) -> FlatLayout | None: ...

    @property
    def flat_gradients(self) -> list[tuple[Tensor, list[Tensor]]]: ...

    def attach_sync(self, sync: GradientSync | None) -> None: ...


class GradientSync:
    """Averages an optimizer's gradient sources over the processes, for as long as it is open."""

    def __init__(self, optimizer: Synchronised, reducer: GradientReducer) -> None:
        self.reducer = reducer
        layout = optimizer.flat_layout
        grads = optimizer.flat_gradients
        self.overlap: GradientOverlap | None = None if layout is None else overlap_for(
            reducer, layout, [b for b, _ in grads], [v for _, v in grads])
        self._optimizer: Synchronised | None = optimizer
        optimizer.attach_sync(self)

    def reduce(self, *sources: Sequence[Tensor | None]) -> None:
        """Average each source's present gradients in place, one source after the other."""
        for grads in sources:
            present = [g for g in grads if g is not None]
            if present:
                self.reducer(present)

    def collecting(self, source: int) -> AbstractContextManager[None]:
        """Gather ``source`` during the backward pass (flat mode with a bucketed reducer)."""
        return nullcontext() if self.overlap is None else self.overlap.collecting(source)

    def close(self) -> None:
        """Remove the backward hooks and detach from the optimizer (idempotent)."""
        if self.overlap is not None:
            self.overlap.close()
            self.overlap = None
        if self._optimizer is not None:
            self._optimizer.attach_sync(None)
            self._optimizer = None


__all__ = ["GradientReducer", "GradientSync", "Synchronised"]
