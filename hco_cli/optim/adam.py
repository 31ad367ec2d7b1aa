"""Adam and AdamW, their cautious (CO) and hierarchical cautious (HCO) variants: one code path.

``adam*`` use coupled L2 (as ``torch.optim.Adam``), ``adamw*`` decoupled decay (as
``torch.optim.AdamW``); the variant (plain, co, hco) is a constructor option.
"""

from __future__ import annotations

import math
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


class Adam(TwoSourceOptimizer):
    r"""Adam from two gradient sources, g_L (labeled) and g_U (unlabeled).

    Per parameter tensor at step t, with u(m, v) = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    and gamma the weight decay (coupled L2 g + gamma w for Adam; for AdamW the decoupled
    w <- w (1 - lr gamma), before the step for plain/co as torch does, after it for hco as printed):

    * ``plain`` (= ``torch.optim.Adam`` / ``AdamW``): g = g_L + g_U; m <- b1 m + (1 - b1) g;
      v <- b2 v + (1 - b2) g^2; w <- w - lr u(m, v).
    * ``co`` (cautious, timm ``caution=True``): as plain, then phi = 1[m * g > 0] with the
      updated m and the current g; w <- w - lr u(m, v) * phibar. The moments are not masked.
    * ``hco`` (Algorithm 1 of the HCO paper, as printed): m, v updated with g_L (plus the L2 term
      for Adam, the trusted gradient only); u^L = u(m, v); phi = 1[u^L * g_U > 0];
      m <- m + (1 - b1) g_U phi; v <- v + (1 - b2) (g_U phi)^2 (no extra decay, same t);
      u = u(m, v); w <- w - lr u^L - lr (phibar * u); then the decoupled decay (AdamW only).

    phibar = phi / s(phi) per tensor. The paper uses one symbol epsilon for Adam's constant and
    the clamp in max(mean(phi), epsilon); by default the clamp is a separate ``mask_eps=1e-3``
    (timm / C-Optim), ``mask_eps="eps"`` reuses Adam's eps instead. ``mask_norm`` picks s:
    ``"clamp"`` max(mean, mask_eps) (default), ``"mean_eps"`` mean + mask_eps (Cautious paper),
    ``"count_plus_one"`` (sum + 1) / numel (original C-Optim).

    ``refine_mask``, ``second_term`` and ``persist_refinement`` select the other readings of the
    hco update (:mod:`hco_cli.optim.readings`; the defaults are the printed Algorithm 1);
    ``unlabeled_scale`` (any variant) multiplies g_U before the step.

    Missing sources: plain and co add what is present. For hco, g_U None skips the unlabeled
    phase (no mask, no refinement): w <- w - lr u^L, then the decay; g_L None with g_U present
    takes g_L = 0. So ``step()`` on hco is the labeled step.

    Execution: ``foreach`` picks the multi-tensor path; ``flat`` (default on CUDA) keeps
    parameters, state and gradients in flat buffers; ``fused`` runs the hco step in flat mode as
    two Triton kernels (default on CUDA for float32 when triton is importable; triton_step.py).
    Plain and co keep the flat torch path and refuse ``fused=True``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        variant: str = "plain",
        mask_eps: float | str | None = None,
        mask_norm: str | None = None,
        refine_mask: str | None = None,
        second_term: str | None = None,
        persist_refinement: bool | None = None,
        unlabeled_scale: float = 1.0,
        foreach: bool | None = None,
        flat: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        check_mask_options(variant, mask_eps, mask_norm, allow_eps_alias=True)
        mask_eps, mask_norm = resolve_mask_options(variant, mask_eps, mask_norm)
        family = "adamw" if decoupled_weight_decay else "adam"
        reading = resolve_reading(variant, family, {
            "refine_mask": refine_mask, "second_term": second_term,
            "persist_refinement": persist_refinement})
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay, "variant": variant,
            "mask_eps": mask_eps, "mask_norm": mask_norm, "foreach": foreach,
            "unlabeled_scale": unlabeled_scale, **reading,
        }
        super().__init__(params, defaults, flat=flat, fused=fused)

    def _fused_algorithm_obstacle(self) -> str | None:
        family = "adamw" if self.defaults["decoupled_weight_decay"] else "adam"
        return fused_reading_obstacle(self.defaults, family)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], low=0.0)
        betas = group["betas"]
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise HyperparameterError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
        check_range("beta1 (betas[0])", betas[0], low=0.0, high=1.0)
        check_range("beta2 (betas[1])", betas[1], low=0.0, high=1.0)
        check_range("eps", group["eps"], low=0.0, low_open=True)
        check_range("weight_decay", group["weight_decay"], low=0.0)
        check_mask_options(group["variant"], group["mask_eps"], group["mask_norm"],
                           allow_eps_alias=True)
        check_range("unlabeled_scale", group["unlabeled_scale"], low=0.0, low_open=True)
        if group["variant"] == "hco":
            check_reading(group)

    @staticmethod
    def _hyper(group: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": group["lr"], "beta1": group["betas"][0], "beta2": group["betas"][1],
            "eps": group["eps"], "weight_decay": group["weight_decay"],
            "decoupled": group["decoupled_weight_decay"], "variant": group["variant"],
            "spec": None if group["variant"] == "plain" else mask_spec(group),
            "reading": reading_of(group) if group["variant"] == "hco" else None,
        }

    def _flat_group_step(self, group: dict[str, Any], layout: FlatLayout, grad_l: Tensor | None,
                         grad_u: Tensor | None) -> Alignment:
        if not self._flat_state:
            self._flat_state = {"exp_avg": layout.zeros(), "exp_avg_sq": layout.zeros()}
        state = self._flat_state
        hyper = self._hyper(group)
        if self._fused is not None:  # the printed reading (fused_obstacle refuses the others)
            del hyper["variant"], hyper["reading"]
            return self._fused.adam(grad_l, grad_u, state["exp_avg"], state["exp_avg_sq"],
                                    step=self._flat_steps, **hyper)
        return _multi_tensor_adam(
            [layout.data], [grad_l], [grad_u], [state["exp_avg"]], [state["exp_avg_sq"]],
            [self._flat_steps], normalise=self._flat_normalise, **hyper)

    def _flat_state_entries(self) -> dict[str, Any]:
        return {"step": self._flat_steps}

    def _group_step(self, group: dict[str, Any], params: list[Tensor], grads_l: Grads,
                    grads_u: Grads) -> Alignment:
        moments: list[tuple[Tensor, Tensor]] = []
        steps: list[int] = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = int(state["step"]) + 1
            steps.append(state["step"])
            moments.append((state["exp_avg"], state["exp_avg_sq"]))
        hyper = self._hyper(group)
        m = [a for a, _ in moments]
        v = [b for _, b in moments]
        if not self._use_foreach(group, params):
            return _single_tensor_adam(params, grads_l, grads_u, m, v, steps, **hyper)
        out: Alignment = []
        for idx in buckets(params):
            out.extend(_multi_tensor_adam(
                pick(params, idx), pick(grads_l, idx), pick(grads_u, idx), pick(m, idx),
                pick(v, idx), pick(steps, idx), normalise=self._normalise, **hyper))
        return out


class AdamW(Adam):
    """Adam with decoupled weight decay (see :class:`Adam`); defaults as ``torch.optim.AdamW``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        variant: str = "plain",
        mask_eps: float | str | None = None,
        mask_norm: str | None = None,
        refine_mask: str | None = None,
        second_term: str | None = None,
        persist_refinement: bool | None = None,
        unlabeled_scale: float = 1.0,
        foreach: bool | None = None,
        flat: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True,
                         variant=variant, mask_eps=mask_eps, mask_norm=mask_norm,
                         refine_mask=refine_mask, second_term=second_term,
                         persist_refinement=persist_refinement, unlabeled_scale=unlabeled_scale,
                         foreach=foreach, flat=flat, fused=fused)


def _direction(m: Tensor, v: Tensor, bc1: float, bc2: float, eps: float) -> Tensor:
    """u = m_hat / (sqrt(v_hat) + eps), torch's eps placement."""
    return (m / bc1) / ((v / bc2).sqrt() + eps)


def _single_tensor_adam(params: list[Tensor], grads_l: Grads, grads_u: Grads, ms: list[Tensor],
                        vs: list[Tensor], steps: list[int], *, lr: float, beta1: float,
                        beta2: float, eps: float, weight_decay: float, decoupled: bool,
                        variant: str, spec: MaskSpec | None, reading: Reading | None) -> Alignment:
    """Readable reference: one tensor at a time, exactly the formulas of :class:`Adam`."""
    out: Alignment = []
    hco = variant == "hco"
    for p, g_l, g_u, m, v, t in zip(params, grads_l, grads_u, ms, vs, steps, strict=True):
        # hco steps from g_L alone (zeros if absent); plain and co from g_L + g_U.
        g = (torch.zeros_like(p) if g_l is None else g_l) if hco else combine(g_l, g_u)
        if weight_decay != 0 and not decoupled:
            g = g.add(p, alpha=weight_decay)
        if weight_decay != 0 and decoupled and not hco:
            p.mul_(1.0 - lr * weight_decay)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        update = _direction(m, v, bc1, bc2, eps)
        if variant == "co":
            assert spec is not None
            phibar, count = normalise_mask(binary_mask(m, g), spec)
            update = update * phibar
            out.append((count, p.numel()))
        elif hco and g_u is not None:
            assert spec is not None and reading is not None
            phi = binary_mask(update, g_u)
            phibar, count = normalise_mask(phi, spec)
            masked = g_u * (phi if reading.binary_refinement else phibar)
            m_ref = m + (1.0 - beta1) * masked
            v_ref = v.addcmul(masked, masked, value=1.0 - beta2)
            refined = _direction(m_ref, v_ref, bc1, bc2, eps)
            second = refined - update if reading.increment else refined
            update = update + phibar * second
            if reading.persist_refinement:
                m.copy_(m_ref)
                v.copy_(v_ref)
            out.append((count, p.numel()))
        p.add_(update, alpha=-lr)
        if weight_decay != 0 and decoupled and hco:
            p.mul_(1.0 - lr * weight_decay)
    return out


def _multi_tensor_adam(params: list[Tensor], grads_l: Grads, grads_u: Grads, ms: list[Tensor],
                       vs: list[Tensor], steps: list[int], *, lr: float, beta1: float,
                       beta2: float, eps: float, weight_decay: float, decoupled: bool,
                       variant: str, spec: MaskSpec | None, reading: Reading | None,
                       normalise: MaskNormaliser) -> Alignment:
    """Foreach path for tensors of one device and dtype.

    Kernel-saving rewrites (equal in exact arithmetic): u = c m / (sqrt(v) + eps sqrt(bc2)) with
    c = sqrt(bc2) / bc1 folded into the per-tensor step size; hco's decay after the step is
    applied first with every update term scaled by (1 - lr gamma); hco's mask uses sign(m),
    equal to sign(u^L) as the denominator and c are positive.
    """
    hco = variant == "hco"
    if hco:
        g = [torch.zeros_like(p) if a is None else a for p, a in zip(params, grads_l, strict=True)]
    else:
        g = foreach_combine(grads_l, grads_u)
    if weight_decay != 0 and not decoupled:
        g = list(torch._foreach_add(g, params, alpha=weight_decay))
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    if decay != 1.0:
        torch._foreach_mul_(params, decay)
    torch._foreach_lerp_(ms, g, 1.0 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, g, g, value=1.0 - beta2)
    root_bc2 = [math.sqrt(1.0 - beta2**t) for t in steps]
    size = -lr * (decay if hco else 1.0)
    sizes = [size * r / (1.0 - beta1**t) for r, t in zip(root_bc2, steps, strict=True)]
    denom = torch._foreach_sqrt(vs)
    torch._foreach_add_(denom, [eps * r for r in root_bc2])
    if variant == "co":
        assert spec is not None
        phi = foreach_binary_masks(ms, g)
        count = normalise(phi, spec)
        torch._foreach_mul_(phi, ms)
        torch._foreach_addcdiv_(params, phi, denom, sizes)
        return [(count, sum(p.numel() for p in params))]
    torch._foreach_addcdiv_(params, ms, denom, sizes)
    idx = [i for i, a in enumerate(grads_u) if a is not None] if hco else []
    if not idx:
        return []
    assert spec is not None and reading is not None
    return [_hco_refine(pick(params, idx), pick(grads_u, idx), pick(ms, idx), pick(vs, idx),
                        pick(denom, idx), pick(root_bc2, idx), pick(sizes, idx), beta1=beta1,
                        beta2=beta2, eps=eps, spec=spec, reading=reading, normalise=normalise)]


def _hco_refine(params: list[Tensor], grads_u: list[Tensor], ms: list[Tensor], vs: list[Tensor],
                denom_l: list[Tensor], root_bc2: list[float], sizes: list[float], *,
                beta1: float, beta2: float, eps: float, spec: MaskSpec, reading: Reading,
                normalise: MaskNormaliser) -> tuple[Tensor, int]:
    """Algorithm 1 lines 11-19 (foreach): mask g_U, refine m and v, add lr phibar u.

    With the printed reading (binary refinement, kept) the moments are refined in place;
    otherwise the refined moments are new tensors, copied into the state only when kept.
    """
    phi = foreach_binary_masks(ms, grads_u)
    if reading.binary_refinement:
        masked = torch._foreach_mul(grads_u, phi)
        count = None
    else:
        count = normalise(phi, spec)  # phi is phibar from here on
        masked = torch._foreach_mul(grads_u, phi)
    in_place = reading.persist_refinement and not reading.increment
    if in_place:
        m_ref, v_ref = ms, vs
        torch._foreach_add_(m_ref, masked, alpha=1.0 - beta1)
        torch._foreach_addcmul_(v_ref, masked, masked, value=1.0 - beta2)
    else:
        m_ref = list(torch._foreach_add(ms, masked, alpha=1.0 - beta1))
        v_ref = list(torch._foreach_addcmul(vs, masked, masked, value=1.0 - beta2))
    denom = torch._foreach_sqrt(v_ref)
    torch._foreach_add_(denom, [eps * r for r in root_bc2])
    if count is None:
        count = normalise(phi, spec)
    if reading.increment:  # phibar (m_ref / denom - m^L / denom^L), before the state changes
        labeled = torch._foreach_mul(phi, ms)
        torch._foreach_addcdiv_(params, labeled, denom_l, [-s for s in sizes])
    torch._foreach_mul_(phi, m_ref)
    torch._foreach_addcdiv_(params, phi, denom, sizes)
    if reading.persist_refinement and not in_place:
        torch._foreach_copy_(ms, m_ref)
        torch._foreach_copy_(vs, v_ref)
    return count, sum(p.numel() for p in params)
