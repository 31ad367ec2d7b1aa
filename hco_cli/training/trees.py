"""Nested structures of tensors (state dicts, optimizer states): CPU copies, finiteness."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def tensors(tree: Any) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in tensors(v)]
    return []


def all_finite(tree: Any) -> bool:
    """One synchronisation: are all floating tensors of ``tree`` free of NaN and Inf?"""
    flags = [t.isfinite().all() for t in tensors(tree) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def cpu_tree(tree: Any) -> Any:
    """A CPU copy of a nested structure of tensors (an optimizer state dict, say)."""
    if isinstance(tree, Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: cpu_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(cpu_tree(v) for v in tree)
    return tree

