"""The two-gradient optimizer contract shared by every ``hco`` optimizer.

Each optimizer steps from two gradient sources, a labeled g_L and an unlabeled g_U, given per
parameter (either may be None). Plain and cautious (CO) variants use g = g_L + g_U, so they are
exactly the standard optimizers of joint SSL training; hierarchical (HCO) variants treat the two
sources differently. ``step()`` reads ``p.grad`` as g_L with no g_U, so the optimizers also work
as ordinary torch optimizers (LR schedulers and step hooks included). The mask helpers live in
:mod:`hco_cli.optim.masks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hco_cli.optim import diagnostics as diag
from hco_cli.optim.flat import FlatLayout, flat_supported
from hco_cli.optim.fused import fused_obstacle
from hco_cli.optim.masks import (
    Grads,
    HyperparameterError,
    LayoutCache,
    MaskSpec,
    foreach_normalise_masks_,
    foreach_scaled,
)
from hco_cli.optim.sync import GradientSync

if TYPE_CHECKING:
    from hco_cli.optim.triton_step import FusedHcoStep

# Group entries that define the algorithm; load_state_dict keeps the optimizer's own.
ALGORITHM_KEYS = ("variant", "mask_eps", "mask_norm", "double_decay", "decoupled_weight_decay",
                  "refine_mask", "second_term", "persist_refinement", "unlabeled_scale")


class TwoSourceOptimizer(Optimizer):
    """Base class: the two-gradient step, the alignment diagnostic and group validation.

    Subclasses implement :meth:`_group_step`, which updates one parameter group from the
    parameters that received at least one gradient and returns (admitted mask count, number of
    masked elements) pairs, none when nothing was masked, and :meth:`_check_group`.

    Setting ``diagnose = True`` makes the next step record :attr:`last_diagnostics`
    (:mod:`hco_cli.optim.diagnostics`) and clears the flag; a training loop sets it once per
    logging interval, so the extra work (a copy of the weights, a few norms) is rare.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], *,
                 flat: bool | None = None, fused: bool | None = None) -> None:
        self._pending: tuple[Grads, Grads] | None = None
        self._sync: GradientSync | None = None
        self._alignment: Tensor | None = None
        self._layout = LayoutCache()
        self._flat: FlatLayout | None = None
        self.diagnose = False
        self._diagnostics: dict[str, Tensor] | None = None
        # Per-tensor (admitted counts, sizes) of the step being diagnosed.
        self._tensor_counts: list[tuple[Tensor, Tensor]] | None = None
        super().__init__(params, defaults)
        self._flat_state: dict[str, Tensor] = {}
        self._flat_steps = 0
        # Per source (g_L, g_U): the flat gradient buffer and its per-parameter views, kept.
        self._flat_grads: list[tuple[Tensor, list[Tensor]]] = []
        self._fused: FusedHcoStep | None = None
        flat = self._wants_flat(flat)
        fused = self._wants_fused(fused, flat)
        if flat:
            self._flat = FlatLayout(self.param_groups[0]["params"])
            for _ in range(2):
                buffer = self._flat.zeros()
                self._flat_grads.append((buffer, self._flat.views(buffer)))
        if fused:
            from hco_cli.optim.triton_step import FusedHcoStep
            assert self._flat is not None  # _wants_fused needs flat mode
            self._fused = FusedHcoStep(self._flat)

    def _wants_flat(self, flat: bool | None) -> bool:
        """Flat mode: when asked, or by default on CUDA unless foreach=False was asked for."""
        params = [p for g in self.param_groups for p in g["params"]]
        if flat is None:
            return (len(self.param_groups) == 1 and self.defaults["foreach"] is not False
                    and flat_supported(params) and params[0].device.type == "cuda")
        if flat and not (len(self.param_groups) == 1 and flat_supported(params)):
            raise HyperparameterError(
                "flat=True needs one parameter group whose tensors share one device and "
                "floating dtype and are dense in memory (contiguous or channels-last)")
        if flat and self.defaults["foreach"] is False:
            raise HyperparameterError("flat=True and foreach=False contradict each other")
        return bool(flat)

    def _wants_fused(self, fused: bool | None, flat: bool) -> bool:
        """The Triton step: by default in flat mode on CUDA for an fp32 hco optimizer."""
        if fused is not None and not isinstance(fused, bool):
            raise HyperparameterError(f"Invalid fused: {fused!r} (must be True, False or None)")
        device = self.param_groups[0]["params"][0].device
        if fused is False or (fused is None and not (flat and device.type == "cuda")):
            return False
        obstacle = (self._fused_algorithm_obstacle() if flat else None) or fused_obstacle(
            self.param_groups[0]["params"], variant=self.variant, flat=flat)
        if obstacle is not None and fused:
            raise HyperparameterError(f"fused=True: {obstacle}")
        return obstacle is None

    def _fused_algorithm_obstacle(self) -> str | None:
        """Why the fused kernels cannot run this optimizer's algorithm options, or None."""
        return None

    def _normalise(self, phi: list[Tensor], spec: MaskSpec) -> Tensor:
        """The foreach mask normaliser (per-tensor counts from one fused norm)."""
        return foreach_normalise_masks_(phi, spec, self._layout, record=self._tensor_counts)

    def _flat_normalise(self, phi: list[Tensor], spec: MaskSpec) -> Tensor:
        """The flat-mode mask normaliser (per-tensor counts from segmented prefix sums)."""
        assert self._flat is not None
        return self._flat.normalise_masks_(phi, spec, record=self._tensor_counts)

    @property
    def last_diagnostics(self) -> dict[str, Tensor] | None:
        """The diagnostics of the last step taken with ``diagnose`` set (0-d device tensors)."""
        return self._diagnostics

    def take_diagnostics(self) -> dict[str, Tensor] | None:
        """:attr:`last_diagnostics`, cleared, so that a later read never sees a stale step."""
        out, self._diagnostics = self._diagnostics, None
        return out

    @property
    def sync(self) -> GradientSync | None:
        """The data-parallel gradient synchronisation attached by the training loop, if any."""
        return self._sync

    def attach_sync(self, sync: GradientSync | None) -> None:
        """Called by :class:`~hco_cli.optim.sync.GradientSync` when it opens (and closes)."""
        self._sync = sync

    @property
    def flat_layout(self) -> FlatLayout | None:
        """Where each parameter lives in the flat buffers (None outside flat mode)."""
        return self._flat

    @property
    def flat_gradients(self) -> list[tuple[Tensor, list[Tensor]]]:
        """Per source (g_L, g_U): the flat gradient buffer and its per-parameter views."""
        return self._flat_grads

    def collecting(self, source: int) -> AbstractContextManager[None]:
        """Gather gradient source ``source`` (0: g_L or the combined g, 1: g_U) as it is
        computed inside the block, all-reducing it during the backward pass.

        Only a flat optimizer with a data-parallel :class:`GradientSync` collects; otherwise the
        block is a no-op and the step packs and reduces the gradients it is given, as before.
        """
        if source not in (0, 1):
            raise ValueError(f"source must be 0 (g_L) or 1 (g_U), not {source!r}")
        return nullcontext() if self._sync is None else self._sync.collecting(source)

    @property
    def flat(self) -> bool:
        """True when parameters, state and gradients live in flat buffers (one kernel per op)."""
        return self._flat is not None

    @property
    def fused(self) -> bool:
        """True when the hco step runs as two fused Triton kernels over the flat buffers."""
        return self._fused is not None

    @property
    def variant(self) -> str:
        """``plain``, ``co`` (cautious) or ``hco`` (hierarchical cautious)."""
        return str(self.defaults["variant"])

    @property
    def hierarchical(self) -> bool:
        """True when g_L and g_U are treated differently (the ``*-hco`` optimizers)."""
        return self.variant == "hco"

    @property
    def last_alignment_tensor(self) -> Tensor | None:
        """Admitted fraction of the last step's masked elements as a 0-d tensor (no sync)."""
        return self._alignment

    @property
    def last_alignment(self) -> float | None:
        """Fraction of masked elements the last step admitted; None if it masked nothing."""
        return None if self._alignment is None else float(self._alignment)

    def step_two_source(self, grads_labeled: Sequence[Tensor | None],
                        grads_unlabeled: Sequence[Tensor | None]) -> None:
        """One step from g_L and g_U, aligned with the parameters in param_groups order."""
        n = sum(len(g["params"]) for g in self.param_groups)
        for name, grads in (("grads_labeled", grads_labeled), ("grads_unlabeled", grads_unlabeled)):
            if len(grads) != n:
                raise ValueError(
                    f"{name} has {len(grads)} entries but the optimizer has {n} parameters")
        self._pending = (list(grads_labeled), list(grads_unlabeled))
        try:
            self.step()  # through the instance attribute, so hooks and LR-scheduler checks run
        finally:
            self._pending = None

    def step(self, closure: Any = None) -> Any:
        """One step; called directly, g_L is ``p.grad`` and g_U is absent."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending is None:
            flat = [p.grad for g in self.param_groups for p in g["params"]]
            sources: tuple[Grads, Grads] = (flat, [None] * len(flat))
        else:
            sources = self._pending
        with torch.no_grad():
            self._step_sources(*sources)
        return loss

    def _reduce(self, *sources: Grads) -> None:
        if self._sync is not None:
            self._sync.reduce(*sources)

    def _step_sources(self, grads_l: Grads, grads_u: Grads) -> None:
        diagnose, self.diagnose = self.diagnose, False
        self._tensor_counts = [] if diagnose else None
        if self._flat is not None:
            before_flat = self._flat.data.clone() if diagnose else None
            stats = self._step_flat(self._flat, grads_l, grads_u, diagnose=diagnose)
            if stats is not None and before_flat is not None:
                self._record(stats, torch.linalg.vector_norm(self._flat.data - before_flat))
            return
        self._reduce(grads_l, grads_u)
        if not diagnose:
            self._step_groups(grads_l, self._scale_unlabeled(grads_u))
            return
        params = [p for g in self.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in params]
        grad_stats = diag.gradient_statistics(
            diag.flat_vector(grads_l, params), diag.flat_vector(grads_u, params),
            float(self.param_groups[0]["lr"]), params[0].device)
        self._step_groups(grads_l, self._scale_unlabeled(grads_u))
        deltas = torch._foreach_sub([p.detach() for p in params], before)
        self._record(grad_stats, torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(deltas))))

    def _record(self, stats: dict[str, Tensor], step_norm: Tensor) -> None:
        fractions = None
        if self._tensor_counts:
            fractions = torch.cat([c.float() / n.float() for c, n in self._tensor_counts])
        elif self._tensor_counts is not None and self._fused is not None \
                and self._alignment is not None:
            assert self._flat is not None
            fractions = self._fused.last_counts().float() / self._flat.sizes.float()
        self._diagnostics = diag.finish(stats, step_norm,
                                        diag.admitted_spread(fractions, step_norm.device))
        self._tensor_counts = None

    def _scale_unlabeled(self, grads_u: Grads) -> Grads:
        """g_U times ``unlabeled_scale`` (one factor for all groups, see add_param_group)."""
        return foreach_scaled(grads_u, float(self.param_groups[0]["unlabeled_scale"]))

    def _step_groups(self, grads_l: Grads, grads_u: Grads) -> None:
        counts: list[Tensor] = []
        total = 0
        offset = 0
        recorded = self._tensor_counts  # filled by the foreach normaliser, if diagnosing
        per_tensor: list[tuple[Tensor, int]] = []
        for group in self.param_groups:
            size = len(group["params"])
            keep = [i for i in range(offset, offset + size)
                    if grads_l[i] is not None or grads_u[i] is not None]
            params = [group["params"][i - offset] for i in keep]
            offset += size
            if not params:
                continue
            result = self._group_step(group, params, [grads_l[i] for i in keep],
                                      [grads_u[i] for i in keep])
            for count, numel in result:
                counts.append(count)
                total += numel
            per_tensor.extend(result)
        if recorded is not None and not recorded and per_tensor:
            # The single-tensor path returns one (count, numel) per tensor.
            device = per_tensor[0][0].device
            recorded.append((torch.stack([c.reshape(()).float() for c, _ in per_tensor]),
                             torch.tensor([n for _, n in per_tensor], device=device)))
        self._alignment = _admitted_fraction(counts, total)

    def _step_flat(self, layout: FlatLayout, grads_l: Grads, grads_u: Grads, *,
                   diagnose: bool = False) -> dict[str, Tensor] | None:
        """Pack both sources into their flat buffers, reduce them, and step all at once.

        A parameter without a gradient in a source takes zeros there (every tensor is stepped;
        the foreach path skips such a tensor instead). A source absent for every parameter
        stays absent, so ``step()`` on an hco optimizer is still the labeled step. A source
        gathered by :meth:`collecting` is already in its buffer, averaged: nothing is packed.
        """
        overlap = None if self._sync is None else self._sync.overlap
        collected = {} if overlap is None else overlap.finish((grads_l, grads_u))
        flats: list[Tensor | None] = []
        packed: Grads = []
        for source, (grads, (buffer, views)) in enumerate(
                zip((grads_l, grads_u), self._flat_grads, strict=True)):
            if source in collected:  # gathered and averaged during the backward pass
                flats.append(collected[source])
            elif all(g is None for g in grads):
                flats.append(None)
            else:
                layout.pack(grads, buffer, views)
                flats.append(buffer)
                packed.append(buffer)
        if flats[0] is None and flats[1] is None:
            self._alignment = None
            return None
        self._reduce(*([f] for f in packed))
        stats = diag.gradient_statistics(flats[0], flats[1], float(self.param_groups[0]["lr"]),
                                         layout.device) if diagnose else None
        scale = float(self.param_groups[0]["unlabeled_scale"])
        if flats[1] is not None and scale != 1.0:
            flats[1].mul_(scale)  # the optimizer's own buffer
        self._flat_steps += 1
        counts = self._flat_group_step(self.param_groups[0], layout, flats[0], flats[1])
        # Each count covers every parameter (gaps admit nothing), whatever the buffer size.
        self._alignment = _admitted_fraction([c for c, _ in counts], layout.numel * len(counts))
        return stats

    def _group_step(self, group: dict[str, Any], params: list[Tensor], grads_l: Grads,
                    grads_u: Grads) -> list[tuple[Tensor, int]]:
        raise NotImplementedError

    def _flat_group_step(self, group: dict[str, Any], layout: FlatLayout, grad_l: Tensor | None,
                         grad_u: Tensor | None) -> list[tuple[Tensor, int]]:
        """The flat counterpart of :meth:`_group_step` (state in ``self._flat_state``)."""
        raise NotImplementedError

    def _flat_state_entries(self) -> dict[str, Any]:
        """Per-parameter scalar state entries of the flat mode (e.g. Adam's step count)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """As torch's; in flat mode the per-parameter state entries are views of the buffers."""
        if self._flat is None:
            return super().state_dict()
        for key, flat in self._flat_state.items():
            for p, view in zip(self._flat.params, self._flat.views(flat), strict=True):
                self.state[p][key] = view
        if self._flat_state:
            for p in self._flat.params:
                self.state[p].update(self._flat_state_entries())
        try:
            return super().state_dict()
        finally:
            self.state.clear()

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group and validate its hyperparameters (overrides included)."""
        if getattr(self, "_flat", None) is not None:
            raise HyperparameterError("an optimizer in flat mode takes no further parameter "
                                      "groups; build it with all parameters (or flat=False)")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if group["variant"] != self.defaults["variant"]:
                raise HyperparameterError("A parameter group cannot change the optimizer's variant")
            if group["unlabeled_scale"] != self.defaults["unlabeled_scale"]:
                raise HyperparameterError("unlabeled_scale must be the same in every parameter "
                                          "group (g_U is scaled before the step)")
            self._check_group(group)
        except HyperparameterError:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load moments, steps and hyperparameters, keeping this optimizer's algorithm options.

        The variant and mask options define the algorithm, not the training state, so a state
        saved by another member of the family (e.g. plain Adam in BCP's pre-training) can seed
        a CO or HCO optimizer without turning it into the saved variant.
        """
        keep = [{k: g[k] for k in ALGORITHM_KEYS if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, own in zip(self.param_groups, keep, strict=True):
            group.update(own)
        if self._flat is not None:
            self._absorb_state(self._flat)

    def _absorb_state(self, layout: FlatLayout) -> None:
        """Move loaded per-parameter state into flat buffers (zeros where a tensor has none)."""
        keys = {k for p in layout.params for k, v in self.state.get(p, {}).items()
                if isinstance(v, Tensor) and v.shape == p.shape}
        self._flat_state = {}
        for key in sorted(keys):
            buffer = layout.zeros()
            layout.pack([self.state.get(p, {}).get(key) for p in layout.params], buffer)
            self._flat_state[key] = buffer
        steps = [int(self.state[p]["step"]) for p in layout.params
                 if "step" in self.state.get(p, {})]
        self._flat_steps = max(steps, default=0)
        self.state.clear()

    def _use_foreach(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        flag = group["foreach"]
        if flag is None:
            return all(p.device.type == "cuda" for p in params)
        return bool(flag)


def _admitted_fraction(counts: list[Tensor], total: int) -> Tensor | None:
    """Admitted mask elements over ``total`` masked ones, a 0-d tensor (no sync); None if none.

    Accumulated in float64 (float32 on MPS, which has no float64).
    """
    if not counts:
        return None
    device = counts[0].device
    acc = torch.float64 if device.type != "mps" else torch.float32
    admitted = counts[0].to(acc) if len(counts) == 1 else torch.stack(
        [c.to(device, acc) for c in counts]).sum()
    return admitted / total
