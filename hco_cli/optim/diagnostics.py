"""Per-step diagnostics of a two-source optimizer, computed on the device (no host sync).

Asked for one step at a time (``optimizer.diagnose = True``), an optimizer reports:

``step_norm``     ||w_after - w_before|| over all parameters (weight decay included);
``step_ratio``    step_norm / (lr ||g_L + g_U||): the step against a plain gradient step of the
                  same learning rate (momentum makes it exceed 1 for plain SGD as well);
``grad_norm_l``, ``grad_norm_u``   ||g_L||, ||g_U|| as the optimizer received them (averaged over
                  processes, before ``unlabeled_scale``);
``cos_lu``        cosine between g_L and g_U (NaN when either is absent or zero);
``admitted_std``, ``admitted_min``, ``admitted_max``   spread over parameter tensors of the
                  fraction of each tensor's elements the mask admitted (NaN without a mask).

Every value is a 0-d float32 tensor on the parameters' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

DIAGNOSTIC_KEYS: tuple[str, ...] = (
    "step_norm", "step_ratio", "grad_norm_l", "grad_norm_u", "cos_lu",
    "admitted_std", "admitted_min", "admitted_max")


def flat_vector(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor | None:
    """The gradients as one float32 vector (zeros where None); None when all are None."""
    if all(g is None for g in grads):
        return None
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                      for g, p in zip(grads, like, strict=True)])


def gradient_statistics(g_l: Tensor | None, g_u: Tensor | None, lr: float,
                        device: torch.device) -> dict[str, Tensor]:
    """Norms, cosine and the plain-step length from two flat gradient vectors."""
    nan = torch.full((), math.nan, device=device)
    zero = torch.zeros((), device=device)
    n_l = zero if g_l is None else torch.linalg.vector_norm(g_l.float())
    n_u = zero if g_u is None else torch.linalg.vector_norm(g_u.float())
    if g_l is None or g_u is None:
        dot, cos = zero, nan
    else:
        dot = torch.dot(g_l.float(), g_u.float())
        cos = dot / (n_l * n_u)  # NaN for a zero vector
    plain = lr * torch.sqrt((n_l * n_l + n_u * n_u + 2 * dot).clamp_min(0.0))
    return {"grad_norm_l": n_l, "grad_norm_u": n_u, "cos_lu": cos, "_plain": plain}


def admitted_spread(fractions: Tensor | None, device: torch.device) -> dict[str, Tensor]:
    """Standard deviation (population), min and max of per-tensor admitted fractions."""
    if fractions is None or fractions.numel() == 0:
        nan = torch.full((), math.nan, device=device)
        return {"admitted_std": nan, "admitted_min": nan, "admitted_max": nan}
    f = fractions.float()
    return {"admitted_std": f.std(correction=0), "admitted_min": f.min(),
            "admitted_max": f.max()}


def finish(stats: dict[str, Tensor], step_norm: Tensor,
           spread: dict[str, Tensor]) -> dict[str, Tensor]:
    """The reported dictionary, in :data:`DIAGNOSTIC_KEYS` order."""
    plain = stats["_plain"]
    out = {"step_norm": step_norm.float(), "step_ratio": step_norm.float() / plain,
           **{k: v for k, v in stats.items() if not k.startswith("_")}, **spread}
    return {k: out[k].reshape(()).float() for k in DIAGNOSTIC_KEYS}
