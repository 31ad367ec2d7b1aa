"""Largest connected component of a batch of 3-D masks on a GPU, with no host synchronisation.

``hco_cli.ops.components`` labels CUDA batches with CuPy, whose ``label`` returns the component
count to the host: one synchronisation per BCP self-training iteration, after which the host
has to launch the student's forwards while the device waits. Here three Triton kernels and a
few torch operations do the whole step on the device's queue:

1. ``_merge_kernel``: every foreground voxel starts as its own tree (``parent[i] = i``, set by
   the host as ``arange``) and is united with each foreground neighbour that comes before it in
   raster order (the backward half of the 6-, 18- or 26-neighbourhood). A union links the larger
   of the two roots to the smaller with an atomic minimum and retries from the value the atomic
   returns when another thread got there first (Playne and Hawick's lock-free union-find, IEEE
   TPDS 2018). Finds halve the paths they walk (with atomic minima too). Every write lowers a
   parent to a smaller index of the same component, so a root is always its component's
   smallest index: the voxel that comes first in raster order.
2. ``_flatten_kernel``: each foreground voxel takes its root as label and adds one to that
   root's size (an integer atomic).
3. torch: per volume the first maximum of the sizes (``argmax``), whose index is the root, so
   size ties go to the component whose first voxel comes first in raster order, as scipy's
   label numbering and BCP's ``getLargestCC`` (argmax of the label histogram) break them.

Indices are int32: a batch must hold fewer than 2**31 voxels (``fits``). Loads of the parent
array bypass the non-coherent L1 cache (``.cg``); a stale read could only return an older, larger
ancestor, which the atomic's returned value then corrects, so the loops end. Triton's
interpreter (TRITON_INTERPRET=1) runs these kernels on CPU tensors, which is how the CPU tests
check them against scipy; the GPU test checks them on CUDA, where programs run concurrently.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from hco_cli.devices import launching_on

BLOCK = 256
LAUNCH: dict[str, Any] = {"num_warps": 4}
_RANK = {6: 1, 18: 2, 26: 3}  # the largest squared neighbour distance of each connectivity


def fits(volumes: Tensor) -> bool:
    """True when the batch's voxel indices fit the kernels' int32 labels."""
    return volumes.numel() < 2**31


@triton.jit
def _find(parent_ptr, x, active):
    """The roots of the trees of ``x`` (where ``active``; elsewhere ``x`` unchanged), halving
    the path on the way: each visited node's parent becomes its grandparent, by an atomic
    minimum, so that the write can never raise a parent that a concurrent union has lowered
    (the grandparent is an ancestor: a smaller index of the same component)."""
    p = tl.load(parent_ptr + x, mask=active, other=0, cache_modifier=".cg")
    p = tl.where(active, p, x)
    moving = p != x
    while tl.max(moving.to(tl.int32), axis=0) > 0:
        grand = tl.load(parent_ptr + p, mask=moving, other=0, cache_modifier=".cg")
        grand = tl.where(moving, grand, p)
        tl.atomic_min(parent_ptr + x, grand, mask=moving & (grand < p), sem="relaxed")
        x = tl.where(moving, grand, x)
        p = tl.load(parent_ptr + x, mask=moving, other=0, cache_modifier=".cg")
        p = tl.where(moving, p, x)
        moving = p != x
    return x


@triton.jit
def _union(parent_ptr, a, b, active):
    """Unite the trees of ``a`` and ``b`` where ``active``: the larger root is linked to the
    smaller one by an atomic minimum; where the atomic finds that root already linked (another
    union got there first), retry with the parent it returned in its place."""
    todo = active
    while tl.max(todo.to(tl.int32), axis=0) > 0:
        a = _find(parent_ptr, a, todo)
        b = _find(parent_ptr, b, todo)
        hi = tl.maximum(a, b)
        lo = tl.minimum(a, b)
        link = todo & (a != b)
        old = tl.atomic_min(parent_ptr + hi, lo, mask=link)
        retry = link & (old != hi)
        a = tl.where(retry, old, a)
        b = tl.where(retry, lo, b)
        todo = retry


@triton.jit
def _merge_kernel(fg_ptr, parent_ptr, total, size_x, size_y, size_z,
                  RANK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < total
    fg = inside & (tl.load(fg_ptr + offs, mask=inside, other=0) != 0)
    z = offs % size_z
    y = (offs // size_z) % size_y
    x = (offs // (size_z * size_y)) % size_x
    for dx in tl.static_range(-1, 2):
        for dy in tl.static_range(-1, 2):
            for dz in tl.static_range(-1, 2):
                # the neighbours before this voxel in raster order, within the connectivity
                if (dx < 0 or (dx == 0 and (dy < 0 or (dy == 0 and dz < 0)))) and \
                        dx * dx + dy * dy + dz * dz <= RANK:
                    ok = fg & (x + dx >= 0) & (x + dx < size_x) & (y + dy >= 0) & \
                        (y + dy < size_y) & (z + dz >= 0) & (z + dz < size_z)
                    other = offs + (dx * size_y + dy) * size_z + dz
                    ok = ok & (tl.load(fg_ptr + other, mask=ok, other=0) != 0)
                    _union(parent_ptr, offs, other, ok)


@triton.jit
def _flatten_kernel(fg_ptr, parent_ptr, sizes_ptr, total, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < total
    fg = inside & (tl.load(fg_ptr + offs, mask=inside, other=0) != 0)
    root = _find(parent_ptr, offs, fg)
    tl.store(parent_ptr + offs, root, mask=fg)
    tl.atomic_add(sizes_ptr + root, 1, mask=fg, sem="relaxed")


def roots(volumes: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    """(root, sizes) of a (B, X, Y, Z) boolean batch: every foreground voxel's component root
    (the component's first index in raster order over the flattened batch; background voxels
    keep their own index) and each root's voxel count (0 elsewhere), both int32, flat."""
    sx, sy, sz = volumes.shape[1:]
    total = volumes.numel()
    fg = volumes.contiguous().view(torch.uint8).reshape(-1)
    parent = torch.arange(total, dtype=torch.int32, device=volumes.device)
    sizes = torch.zeros(total, dtype=torch.int32, device=volumes.device)
    if total:
        grid = (triton.cdiv(total, BLOCK),)
        with launching_on(volumes.device):
            _merge_kernel[grid](fg, parent, total, sx, sy, sz, RANK=_RANK[connectivity],
                                BLOCK=BLOCK, **LAUNCH)
            _flatten_kernel[grid](fg, parent, sizes, total, BLOCK=BLOCK, **LAUNCH)
    return parent, sizes


def largest_component(volumes: Tensor, connectivity: int) -> Tensor:
    """The largest component of each volume of a (B, X, Y, Z) boolean batch (ties: the one
    whose first voxel comes first in raster order), as a boolean batch; an empty volume stays
    empty. Everything runs on the device's current stream; nothing waits for it."""
    b = volumes.shape[0]
    per_volume = volumes[0].numel()
    parent, sizes = roots(volumes, connectivity)
    best = sizes.view(b, per_volume).argmax(dim=1)  # the first maximum: the raster-first root
    best = best + torch.arange(b, device=volumes.device) * per_volume
    keep = parent.view(b, per_volume) == best.unsqueeze(1).to(torch.int32)
    return (keep & volumes.reshape(b, per_volume)).reshape(volumes.shape)
