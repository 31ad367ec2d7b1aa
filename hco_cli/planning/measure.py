"""The measurement the memory model (memory.py) is checked against: what autograd saves.

Apart from memory.py so that planning itself needs no torch.
"""

from __future__ import annotations

import torch
from torch import nn


def measure_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves in ``model(x)``, parameters and buffers
    excluded: the measurement :func:`saved_elements` is checked against (works on CPU)."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())
