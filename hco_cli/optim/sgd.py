"""SGD with momentum, its cautious (CO) and hierarchical cautious (HCO) variants: one code path.

The variant is a constructor option, as caution is in timm; the three registered names
``sgd``, ``sgd-co`` and ``sgd-hco`` are this class with ``variant`` plain, co and hco.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hco_cli.optim.base import TwoSourceOptimizer
from hco_cli.optim.flat import FlatLayout
from hco_cli.optim.masks import (
    Grads,
    HyperparameterError,
    MaskNormaliser,
    MaskSpec,
    binary_mask,
    buckets,
    check_mask_options,
    check_range,
    combine,
    foreach_binary_masks,
    foreach_combine,
    mask_spec,
    normalise_mask,
    pick,
    resolve_mask_options,
)
from hco_cli.optim.readings import (
    Reading,
    check_reading,
    fused_reading_obstacle,
    reading_of,
    resolve_reading,
)

Alignment = list[tuple[Tensor, int]]


class SGD(TwoSourceOptimizer):
    r"""SGD with heavy-ball momentum from two gradient sources, g_L (labeled) and g_U (unlabeled).

    Per parameter tensor, with gamma the weight decay, mu the momentum and b the buffer:

    * ``plain`` (= ``torch.optim.SGD``, no dampening, no Nesterov): g = g_L + g_U + gamma w
      (coupled L2); b <- mu b + g (b = g on the first step); w <- w - lr b.
    * ``co`` (cautious): as plain, then phi = 1[b * g > 0] (g with the L2 term),
      phibar = phi / s(phi) and w <- w - lr (b * phibar). The buffer is not masked.
    * ``hco`` (Algorithm 2 of the HCO paper, as printed): m <- mu m + g_L; m^L <- m;
      phi = 1[m^L * g_U > 0]; phibar = phi / s(phi); m <- mu m + g_U * phibar (line 14);
      w <- w - lr m^L - lr (m * phibar); then decoupled decay w <- w - lr gamma w.
      ``double_decay=False`` takes the other reading of line 14, m <- m + g_U * phibar, in which
      the momentum is not decayed a second time within one step. ``refine_mask``,
      ``second_term`` and ``persist_refinement`` select the other readings of the update
      (:mod:`hco_cli.optim.readings`); the defaults are the printed algorithm.

    ``decoupled_weight_decay=True`` (plain and co) applies the decay as w <- w (1 - lr gamma)
    before the step, the form of sgd-hco, instead of torch's coupled L2; ``unlabeled_scale``
    (any variant) multiplies g_U before the step (a tiny value keeps only its signs acting
    through the hco mask: the "signs only" control).

    s(phi) is ``max(mean(phi), mask_eps)`` per tensor by default (``mask_norm="clamp"``, as timm
    and C-Optim; the paper's one symbol epsilon is read as this separate clamp, 1e-3), or
    ``mean(phi) + mask_eps`` (``"mean_eps"``) or ``(sum(phi) + 1) / numel`` (``"count_plus_one"``).

    Missing sources: plain and co add what is present. For hco, g_U None skips the unlabeled
    phase (no mask, no refinement, no second decay): m <- mu m + g_L, w <- w - lr m, then the
    decay; g_L None with g_U present takes g_L = 0. So ``step()`` on hco is the labeled step.

    Execution: ``foreach`` picks the multi-tensor path; ``flat`` (default on CUDA) keeps
    parameters, state and gradients in flat buffers; ``fused`` runs the hco step in flat mode as
    two Triton kernels (default on CUDA for float32 when triton is importable; triton_step.py).
    Plain and co keep the flat torch path and refuse ``fused=True``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        *,
        variant: str = "plain",
        mask_eps: float | None = None,
        mask_norm: str | None = None,
        double_decay: bool | None = None,
        refine_mask: str | None = None,
        second_term: str | None = None,
        persist_refinement: bool | None = None,
        decoupled_weight_decay: bool | None = None,
        unlabeled_scale: float = 1.0,
        foreach: bool | None = None,
        flat: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        check_mask_options(variant, mask_eps, mask_norm, allow_eps_alias=False)
        if double_decay is not None and variant != "hco":
            raise HyperparameterError("double_decay applies only to the hco variant (sgd-hco)")
        if decoupled_weight_decay is not None and variant == "hco":
            raise HyperparameterError("decoupled_weight_decay applies to sgd and sgd-co; sgd-hco "
                                      "always decays decoupled, after the step (Algorithm 2)")
        eps, norm = resolve_mask_options(variant, mask_eps, mask_norm)
        reading = resolve_reading(variant, "sgd", {
            "refine_mask": refine_mask, "second_term": second_term,
            "persist_refinement": persist_refinement})
        defaults = {
            "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "variant": variant,
            "mask_eps": eps, "mask_norm": norm, "foreach": foreach,
            "double_decay": (True if double_decay is None else double_decay)
            if variant == "hco" else None,
            "decoupled_weight_decay": bool(decoupled_weight_decay),
            "unlabeled_scale": unlabeled_scale, **reading,
        }
        super().__init__(params, defaults, flat=flat, fused=fused)

    def _fused_algorithm_obstacle(self) -> str | None:
        return fused_reading_obstacle(self.defaults, "sgd")

    def _check_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], low=0.0)
        check_range("momentum", group["momentum"], low=0.0, high=1.0)
        check_range("weight_decay", group["weight_decay"], low=0.0)
        check_mask_options(group["variant"], group["mask_eps"], group["mask_norm"],
                           allow_eps_alias=False)
        check_range("unlabeled_scale", group["unlabeled_scale"], low=0.0, low_open=True)
        if group["variant"] == "hco":
            if not isinstance(group["double_decay"], bool):
                raise HyperparameterError(f"Invalid double_decay: {group['double_decay']!r} "
                                          "(must be True or False)")
            check_reading(group)

    @staticmethod
    def _hyper(group: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": group["lr"], "momentum": group["momentum"], "weight_decay": group["weight_decay"],
            "variant": group["variant"], "double_decay": bool(group["double_decay"]),
            "spec": None if group["variant"] == "plain" else mask_spec(group),
            "decoupled": bool(group["decoupled_weight_decay"]),
            "reading": reading_of(group) if group["variant"] == "hco" else None,
        }

    def _group_step(self, group: dict[str, Any], params: list[Tensor], grads_l: Grads,
                    grads_u: Grads) -> Alignment:
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        hyper = self._hyper(group)
        if not self._use_foreach(group, params):
            return _single_tensor_sgd(params, grads_l, grads_u, bufs, **hyper)
        out: Alignment = []
        for idx in buckets(params):
            new_bufs, counts = _multi_tensor_sgd(
                pick(params, idx), pick(grads_l, idx), pick(grads_u, idx), pick(bufs, idx),
                normalise=self._normalise, **hyper)
            for i, buf in zip(idx, new_bufs, strict=True):
                self.state[params[i]]["momentum_buffer"] = buf
            out.extend(counts)
        return out


    def _flat_group_step(self, group: dict[str, Any], layout: FlatLayout, grad_l: Tensor | None,
                         grad_u: Tensor | None) -> Alignment:
        buf = self._flat_state.get("momentum_buffer")
        if buf is None:
            buf = layout.zeros()
        hyper = self._hyper(group)
        if self._fused is not None:
            self._flat_state["momentum_buffer"] = buf
            # The kernels implement the printed reading (fused_obstacle refuses the others).
            return self._fused.sgd(grad_l, grad_u, buf, lr=hyper["lr"], momentum=hyper["momentum"],
                                   weight_decay=hyper["weight_decay"],
                                   double_decay=hyper["double_decay"], spec=hyper["spec"])
        new, counts = _multi_tensor_sgd(
            [layout.data], [grad_l], [grad_u], [buf], normalise=self._flat_normalise, **hyper)
        self._flat_state["momentum_buffer"] = new[0]
        return counts


def _single_tensor_sgd(params: list[Tensor], grads_l: Grads, grads_u: Grads, bufs: list[Tensor],
                       *, lr: float, momentum: float, weight_decay: float, variant: str,
                       double_decay: bool, spec: MaskSpec | None, decoupled: bool,
                       reading: Reading | None) -> Alignment:
    """Readable reference: one tensor at a time, exactly the formulas of :class:`SGD`."""
    out: Alignment = []
    for p, g_l, g_u, buf in zip(params, grads_l, grads_u, bufs, strict=True):
        if variant == "hco":
            assert spec is not None and reading is not None
            g_l = torch.zeros_like(p) if g_l is None else g_l
            buf.mul_(momentum).add_(g_l)
            m_l = buf.clone()
            update = m_l
            if g_u is not None:
                phi = binary_mask(m_l, g_u)
                phibar, count = normalise_mask(phi, spec)
                gate = phi if reading.binary_refinement else phibar
                m = m_l * momentum if double_decay else m_l.clone()
                m.add_(g_u * gate)
                second = g_u * gate if reading.increment else m  # = m - m^L without 2nd decay
                update = m_l + second * phibar
                if reading.persist_refinement:
                    buf.copy_(m)
                out.append((count, p.numel()))
            p.add_(update, alpha=-lr)
            p.mul_(1.0 - lr * weight_decay)
            continue
        g = combine(g_l, g_u)
        if weight_decay != 0 and decoupled:
            p.mul_(1.0 - lr * weight_decay)
        elif weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        buf.mul_(momentum).add_(g)
        if spec is None:
            p.add_(buf, alpha=-lr)
            continue
        phibar, count = normalise_mask(binary_mask(buf, g), spec)
        p.add_(buf * phibar, alpha=-lr)
        out.append((count, p.numel()))
    return out


def _multi_tensor_sgd(params: list[Tensor], grads_l: Grads, grads_u: Grads, bufs: list[Tensor],
                      *, lr: float, momentum: float, weight_decay: float, variant: str,
                      double_decay: bool, spec: MaskSpec | None, decoupled: bool,
                      reading: Reading | None,
                      normalise: MaskNormaliser) -> tuple[list[Tensor], Alignment]:
    """Foreach path for tensors of one device and dtype; returns the new momentum buffers.

    The new buffer mu b + g is written to fresh tensors (one kernel) rather than updated in
    place (two kernels); the caller stores them in the state.
    """
    if variant == "hco":
        assert spec is not None and reading is not None
        return _multi_tensor_hco_sgd(params, grads_l, grads_u, bufs, lr=lr, momentum=momentum,
                                     weight_decay=weight_decay, double_decay=double_decay,
                                     spec=spec, reading=reading, normalise=normalise)
    g = foreach_combine(grads_l, grads_u)
    if weight_decay != 0 and decoupled:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    elif weight_decay != 0:
        g = list(torch._foreach_add(g, params, alpha=weight_decay))
    new = list(torch._foreach_add(g, bufs, alpha=momentum))
    if spec is None:
        torch._foreach_add_(params, new, alpha=-lr)
        return new, []
    phi = foreach_binary_masks(new, g)
    count = normalise(phi, spec)
    torch._foreach_addcmul_(params, new, phi, value=-lr)
    return new, [(count, sum(p.numel() for p in params))]


def _multi_tensor_hco_sgd(params: list[Tensor], grads_l: Grads, grads_u: Grads,
                          bufs: list[Tensor], *, lr: float, momentum: float, weight_decay: float,
                          double_decay: bool, spec: MaskSpec, reading: Reading,
                          normalise: MaskNormaliser) -> tuple[list[Tensor], Alignment]:
    """Algorithm 2 with foreach kernels; the decay after the step is folded in as a factor.

    (w - lr U)(1 - lr gamma) = (1 - lr gamma) w - lr (1 - lr gamma) U, so the weights are
    scaled first and every update term carries the factor: one pass over w fewer. With the
    printed reading the refined momentum is written into the new buffers in place.
    """
    g_l = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads_l, strict=True)]
    new = list(torch._foreach_add(g_l, bufs, alpha=momentum))  # m^L = mu m + g_L
    decay = 1.0 - lr * weight_decay
    if decay != 1.0:
        torch._foreach_mul_(params, decay)
    torch._foreach_add_(params, new, alpha=-lr * decay)
    idx = [i for i, g in enumerate(grads_u) if g is not None]
    if not idx:
        return new, []
    m_l, g_u, p = pick(new, idx), pick(grads_u, idx), pick(params, idx)
    phi = foreach_binary_masks(m_l, g_u)
    binary = list(torch._foreach_mul(phi, 1.0)) if reading.binary_refinement else None
    count = normalise(phi, spec)  # phi is phibar from here on
    gate = phi if binary is None else binary
    if reading.increment:  # double_decay is False here (check_reading)
        increment = torch._foreach_mul(g_u, gate)
        torch._foreach_addcmul_(p, increment, phi, value=-lr * decay)
        if reading.persist_refinement:
            torch._foreach_add_(m_l, increment)
        return new, [(count, sum(t.numel() for t in p))]
    if reading.persist_refinement:
        m = m_l
        if double_decay:
            torch._foreach_mul_(m, momentum)
    else:
        m = list(torch._foreach_mul(m_l, momentum if double_decay else 1.0))
    torch._foreach_addcmul_(m, g_u, gate)
    torch._foreach_addcmul_(p, m, phi, value=-lr * decay)
    return new, [(count, sum(t.numel() for t in p))]
