"""Which CUDA device a launch goes to: shared by the hand-written Triton kernels."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


def launching_on(device: torch.device) -> AbstractContextManager[Any]:
    """Triton launches on the current CUDA device: make ``device`` the current one for the
    block if it is a CUDA device other than the current one (otherwise nothing changes)."""
    if device.type == "cuda" and torch.cuda.current_device() != device.index:
        return torch.cuda.device(device)
    return nullcontext()
