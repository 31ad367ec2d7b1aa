"""Whether the fused Triton kernels (triton_step.py) can step a parameter list.

Kept apart from flat.py, which triton_step.py builds on: the check imports triton_step (and with
it triton, an optional dependency) only when everything else allows the kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec

import torch
from torch import Tensor


def fused_obstacle(params: Sequence[Tensor], *, variant: str, flat: bool) -> str | None:
    """Why the fused Triton kernels (triton_step.py) cannot step ``params``, or None.

    Checked before any parameter moves into a flat buffer; imports triton only when the rest
    allows the kernels.
    """
    if not flat:
        return "the fused kernels need flat mode (flat=True, the CUDA default)"
    if variant != "hco":
        return ("fused kernels exist only for the hco variants; plain and co optimizers use the "
                "flat torch path (fused=False or None)")
    first = params[0]
    if first.dtype != torch.float32:
        return f"the fused kernels need float32 parameters, not {first.dtype}"
    if first.device.type not in ("cuda", "cpu"):
        return f"the fused kernels need a CUDA device, not {first.device.type}"
    if find_spec("triton") is None:
        return "the fused kernels need triton (pip install triton)"
    try:
        from hco_cli.optim import triton_step
    except Exception as exc:  # a broken triton install: report it, never fail by default
        return f"triton could not be imported ({exc})"
    if first.device.type == "cpu" and not triton_step.interpreted():
        return ("on the CPU the fused kernels need Triton's interpreter (TRITON_INTERPRET=1 "
                "before hco_cli.optim.triton_step is first imported)")
    return None
