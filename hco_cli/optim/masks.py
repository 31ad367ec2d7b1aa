"""Mask helpers and hyperparameter checks of the ``hco`` optimizers, and the foreach utilities.

phi = 1[a * b > 0] and its per-tensor normalisation phibar = phi / s(phi) (the three readings of
s in :class:`MaskSpec`), in a readable single-tensor form and as foreach kernels, plus the
range checks every optimizer applies to its hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from hco_cli.errors import ConfigError

Variant = Literal["plain", "co", "hco"]
MaskNorm = Literal["clamp", "mean_eps", "count_plus_one"]
Grads = list[Tensor | None]
# phi -> phibar in place per tensor, returning the admitted count (0-d, no host sync).
MaskNormaliser = Callable[[list[Tensor], "MaskSpec"], Tensor]
VARIANTS: tuple[str, ...] = ("plain", "co", "hco")
MASK_NORMS: tuple[str, ...] = ("clamp", "mean_eps", "count_plus_one")
DEFAULT_MASK_EPS = 1e-3

class HyperparameterError(ConfigError, ValueError):
    """An optimizer hyperparameter is out of range or does not apply to the optimizer."""


@dataclass(frozen=True)
class MaskSpec:
    """How a binary mask phi is rescaled to phibar = phi / s, per parameter tensor.

    ``clamp``: s = max(mean(phi), eps) (timm / C-Optim, default); ``mean_eps``: s = mean(phi) + eps
    (Cautious Optimizers paper, Algorithm 1); ``count_plus_one``: s = (sum(phi) + 1) / numel
    (original C-Optim code; eps unused).
    """

    norm: str
    eps: float


def check_range(name: str, value: Any, *, low: float, high: float | None = None,
                low_open: bool = False) -> None:
    """Refuse a hyperparameter outside [low, high) (or (low, high) with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HyperparameterError(f"Invalid {name}: {value!r} (must be a number)")
    below = value <= low if low_open else value < low
    if below or (high is not None and value >= high) or value != value:
        lo = f"> {low}" if low_open else f">= {low}"
        hi = "" if high is None else f" and < {high}"
        raise HyperparameterError(f"Invalid {name}: {value!r} (must be {lo}{hi})")


def check_mask_options(variant: str, mask_eps: float | str | None, mask_norm: str | None,
                       *, allow_eps_alias: bool) -> None:
    """Refuse unknown variants and mask options, and mask options for a variant without a mask."""
    if variant not in VARIANTS:
        raise HyperparameterError(
            f"Invalid variant: {variant!r} (choose one of {', '.join(VARIANTS)})")
    if variant == "plain":
        if mask_eps is not None or mask_norm is not None:
            raise HyperparameterError(
                "mask_eps and mask_norm apply only to the co and hco variants")
        return
    if mask_norm is not None and mask_norm not in MASK_NORMS:
        raise HyperparameterError(
            f"Invalid mask_norm: {mask_norm!r} (choose one of {', '.join(MASK_NORMS)})")
    if mask_norm == "count_plus_one" and mask_eps is not None:
        raise HyperparameterError("mask_eps does not apply to mask_norm 'count_plus_one'")
    if mask_eps == "eps":
        if not allow_eps_alias:
            raise HyperparameterError("mask_eps='eps' needs an optimizer with an eps (Adam family)")
        return
    if mask_eps is not None:
        check_range("mask_eps", mask_eps, low=0.0, low_open=True)


def resolve_mask_options(variant: str, mask_eps: float | str | None,
                         mask_norm: str | None) -> tuple[float | str | None, str | None]:
    """Fill the mask defaults (clamp-mean with eps 1e-3) for the co and hco variants."""
    if variant == "plain":
        return mask_eps, mask_norm
    norm = mask_norm or "clamp"
    if mask_eps is None and norm != "count_plus_one":
        mask_eps = DEFAULT_MASK_EPS
    return mask_eps, norm


def mask_spec(group: dict[str, Any]) -> MaskSpec:
    """The mask normalisation of a parameter group (``mask_eps='eps'`` reuses Adam's eps)."""
    eps = group["mask_eps"]
    if eps == "eps":
        eps = group["eps"]
    return MaskSpec(norm=group["mask_norm"], eps=0.0 if eps is None else float(eps))


def binary_mask(a: Tensor, b: Tensor) -> Tensor:
    """phi = 1[a * b > 0] in the dtype of ``a`` (single-tensor reference)."""
    return (a * b > 0).to(a.dtype)


def normalise_mask(phi: Tensor, spec: MaskSpec) -> tuple[Tensor, Tensor]:
    """phibar = phi / s for one tensor, and the number of admitted elements (single-tensor)."""
    count = phi.sum(dtype=_acc_dtype(phi))
    if spec.norm == "clamp":
        scale = phi.mean().clamp_min(spec.eps)
    elif spec.norm == "mean_eps":
        scale = phi.mean() + spec.eps
    else:
        scale = (phi.sum() + 1) / phi.numel()
    return phi / scale, count


def foreach_binary_masks(a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """phi_i = 1[a_i * b_i > 0] in three foreach kernels (sign of the clamped product)."""
    phi = list(torch._foreach_mul(a, b))
    torch._foreach_clamp_min_(phi, 0.0)
    torch._foreach_sign_(phi)
    return phi


class LayoutCache:
    """Per-device tensors of parameter sizes, built once so that a step copies nothing to it."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], Tensor] = {}

    def numels(self, tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
        """The element counts of ``tensors`` (all on one device) as a 1-D ``dtype`` tensor."""
        sizes = tuple(t.numel() for t in tensors)
        key = (tensors[0].device, dtype, sizes)
        if key not in self._entries:
            if len(self._entries) >= 16:
                self._entries.clear()
            self._entries[key] = torch.tensor(sizes, dtype=dtype, device=tensors[0].device)
        return self._entries[key]


def mask_scale(counts: Tensor, numels: Tensor, spec: MaskSpec) -> Tensor:
    """s(phi) per tensor from its admitted counts and sizes (1-D tensors), as ``spec`` reads it."""
    if spec.norm == "clamp":
        return (counts / numels).clamp_min_(spec.eps)
    if spec.norm == "mean_eps":
        return counts / numels + spec.eps
    return (counts + 1) / numels


def foreach_normalise_masks_(phi: list[Tensor], spec: MaskSpec, cache: LayoutCache, *,
                             record: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Turn every 0/1 mask into phibar in place; return the admitted count (0-d, no host sync).

    The per-tensor counts come from one fused L1 norm; the factors 1/s stay on the device as 0-d
    tensors. On CUDA the rescale is written phi <- phi + (1/s - 1) * phi, which
    ``_foreach_addcmul_`` runs as one fused kernel (its 0-d tensor1 fast path; a 0-d
    ``_foreach_mul_`` would launch one kernel per tensor). It is exact for phi in {0, 1}, as
    1/s - 1 is exact for 1/s in [1/2, 2^24]. On CPU, where that broadcast addcmul is slow, a
    plain multiply is used. ``record``, when given, receives the per-tensor (counts, sizes).
    """
    acc = _acc_dtype(phi[0])
    counts = torch.stack(torch._foreach_norm(phi, 1, dtype=acc))
    numels = cache.numels(phi, acc)
    if record is not None:
        record.append((counts, numels))  # not changed in place below
    scale = mask_scale(counts, numels, spec)
    rescale_(phi, scale.reciprocal_().to(phi[0].dtype), fused=phi[0].device.type == "cuda")
    return counts.sum()


def rescale_(phi: list[Tensor], inverse: Tensor, *, fused: bool) -> None:
    """phi_i <- phi_i * inverse[i] for 0/1 masks (see :func:`foreach_normalise_masks_`)."""
    if fused:
        torch._foreach_addcmul_(phi, list((inverse - 1.0).unbind(0)), phi)
    else:
        torch._foreach_mul_(phi, list(inverse.unbind(0)))


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def combine(a: Tensor | None, b: Tensor | None) -> Tensor:
    """g = a + b where None counts as absent (at least one must be present); never in place."""
    if a is None:
        assert b is not None  # callers drop parameters with no gradient at all
        return b
    return a if b is None else a + b


def buckets(params: list[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype), as foreach kernels need."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return list(groups.values())


def pick(items: Sequence[Any], idx: list[int]) -> list[Any]:
    """``[items[i] for i in idx]``."""
    return [items[i] for i in idx]


def foreach_combine(grads_l: Grads, grads_u: Grads) -> list[Tensor]:
    """g = g_L + g_U per tensor (None absent), the sums in one foreach kernel; never in place."""
    pairs = list(zip(grads_l, grads_u, strict=True))
    both = [i for i, (a, b) in enumerate(pairs) if a is not None and b is not None]
    sums = iter(torch._foreach_add(pick(grads_l, both), pick(grads_u, both)) if both else ())
    return [next(sums) if a is not None and b is not None else combine(a, b) for a, b in pairs]


def foreach_scaled(grads: Grads, scale: float) -> Grads:
    """``scale`` times each present gradient (one foreach kernel, new tensors); as given if 1."""
    idx = [i for i, g in enumerate(grads) if g is not None]
    if scale == 1.0 or not idx:
        return grads
    scaled = iter(torch._foreach_mul([grads[i] for i in idx], scale))  # type: ignore[misc]
    return [None if g is None else next(scaled) for g in grads]
