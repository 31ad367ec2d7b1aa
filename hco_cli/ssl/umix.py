"""UCMT's on-device operations: Gaussian-blur strong views and the UMIX block swap.

UCMT (``data/dataset_3d.py``) makes each strong view with ``scipy.ndimage.gaussian_filter`` of
sigma ~ U(0.1, 2.0), applied with probability 0.8; :func:`gaussian_blur` reproduces scipy's
filter (truncate 4, 'reflect' borders) in torch so the views are made on the training device.
UMIX (``train_3d.py`` step 2) cuts a volume into 8 x 8 x 8 blocks, and for each sample moves the
least-uncertain blocks of one student's map onto the most-uncertain blocks of the other's. The
number of blocks may differ per axis (an anisotropic patch of 12 slices takes 8 x 8 x 6 blocks,
see :func:`hco_cli.planning.rules.umix_blocks`); one number means the same on every axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hco_cli.ssl.common import FrameworkRng

Blocks = int | tuple[int, int, int]
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default
ENTROPY_EPS = 1e-6


def _gaussian_kernel(sigma: float, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """scipy's 1-D Gaussian weights, computed on ``device`` (a host copy would synchronise)."""
    radius = int(TRUNCATE * sigma + 0.5)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.arange(-radius, radius + 1, dtype=work, device=device)
    weights = torch.exp(-0.5 * x * x / (sigma * sigma))
    return (weights / weights.sum()).to(dtype)


def _reflect_index(size: int, radius: int, device: torch.device) -> Tensor:
    """Indices of a 'reflect'-padded axis (d c b a | a b c d | d c b a), scipy's default mode."""
    i = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(i >= size, 2 * size - 1 - i, i)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, X, Y, Z) over the three spatial axes, as scipy's."""
    kernel = _gaussian_kernel(sigma, dtype=images.dtype, device=images.device)
    radius = (kernel.numel() - 1) // 2
    n, c = images.shape[:2]
    out = images.reshape(n * c, 1, *images.shape[2:])
    for axis in (2, 3, 4):
        padded = out.index_select(axis, _reflect_index(out.shape[axis], radius, out.device))
        shape = [1, 1, 1, 1, 1]
        shape[axis] = kernel.numel()
        out = F.conv3d(padded, kernel.reshape(shape))
    return out.reshape(images.shape)


def strong_view(images: Tensor, rng: FrameworkRng, *, p: float, sigma_min: float,
                sigma_max: float) -> Tensor:
    """UCMT's strong view: per sample, blur with sigma ~ U(min, max) with probability ``p``."""
    views = []
    for sample in images.split(1):
        sigma = rng.uniform(sigma_min, sigma_max)
        blur = rng.uniform(0.0, 1.0) < p
        views.append(gaussian_blur(sample, sigma) if blur else sample)
    return torch.cat(views)


def mean_entropy(prob_a: Tensor, prob_b: Tensor) -> Tensor:
    """Entropy of the mean of two softmax maps, (B, 1, X, Y, Z): UMIX's uncertainty."""
    mean = (prob_a + prob_b) / 2
    return -torch.sum(mean * torch.log(mean + ENTROPY_EPS), dim=1, keepdim=True)


def per_axis(blocks: Blocks) -> tuple[int, int, int]:
    """Blocks per axis: one number stands for all three."""
    if isinstance(blocks, int):
        return (blocks, blocks, blocks)
    return (int(blocks[0]), int(blocks[1]), int(blocks[2]))


def _to_blocks(t: Tensor, blocks: Blocks) -> Tensor:
    """(B, C, X, Y, Z) -> (B, nx ny nz, C, X/nx, Y/ny, Z/nz), blocks in raster order."""
    nx, ny, nz = per_axis(blocks)
    b, c, x, y, z = t.shape
    parts = t.reshape(b, c, nx, x // nx, ny, y // ny, nz, z // nz).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return parts.reshape(b, nx * ny * nz, c, x // nx, y // ny, z // nz)


def _from_blocks(parts: Tensor, blocks: Blocks) -> Tensor:
    nx, ny, nz = per_axis(blocks)
    b, _, c, bx, by, bz = parts.shape
    t = parts.reshape(b, nx, ny, nz, c, bx, by, bz).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return t.reshape(b, c, nx * bx, ny * by, nz * bz)


def block_order(uncertainty: Tensor, blocks: Blocks) -> Tensor:
    """Block indices per sample sorted by decreasing mean uncertainty, (B, nx ny nz)."""
    scores = _to_blocks(uncertainty, blocks).flatten(2).mean(dim=2)
    return scores.argsort(dim=1, descending=True, stable=True)


def umix(tensors: list[Tensor], uncertainty1: Tensor, uncertainty2: Tensor, *, topk: int,
         blocks_per_axis: Blocks) -> list[Tensor]:
    """Swap blocks of every (B, C, X, Y, Z) tensor by two students' uncertainty maps.

    In UCMT's order: the top-k most uncertain blocks of map 1 receive the k least uncertain blocks
    of map 2; then the top-k of map 2 receive the k least uncertain of map 1 (reading the result
    of the first assignment, as UCMT's in-place indexing does).
    """
    n = blocks_per_axis
    order1, order2 = block_order(uncertainty1, n), block_order(uncertainty2, n)
    top1, low1 = order1[:, :topk], order1[:, -topk:]
    top2, low2 = order2[:, :topk], order2[:, -topk:]
    rows = torch.arange(order1.shape[0], device=order1.device).unsqueeze(1)
    mixed = []
    for t in tensors:
        blocks = _to_blocks(t, n).clone()
        blocks[rows, top1] = blocks[rows, low2]
        blocks[rows, top2] = blocks[rows, low1]
        mixed.append(_from_blocks(blocks, n))
    return mixed


def check_divisible(shape: tuple[int, ...], blocks: Blocks) -> bool:
    """True when every spatial size is a multiple of its blocks (UMIX needs whole blocks)."""
    return (all(s % n == 0 for s, n in zip(shape, per_axis(blocks), strict=True))
            and math.prod(shape) > 0)
