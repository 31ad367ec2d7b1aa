"""The planner's rules: target spacing, per-stage pooling and kernels, patch size, UMIX blocks.

- **Target spacing**: the median spacing per axis of the training cases' source files. For
  anisotropic data (one axis more than :data:`ANISOTROPY` times the finest) the thick axis
  also keeps its median. nnU-Net takes the thick axis' 10th percentile instead, which gives
  90% of the cases more slices than they were acquired with; neither rule resamples the thick
  axis towards the in-plane spacing, which would invent slices.
- **Pooling and kernels** (nnU-Net's rule on the V-Net's fixed four down-samplings): at each
  scale, an axis whose current spacing is more than :data:`ANISOTROPY` times the finest axis'
  gets kernel 1 and is not pooled; the others get kernel 3 and are pooled while at least
  :data:`MIN_FEATURE` voxels remain after halving. Pooling doubles an axis' spacing, so a thick
  axis joins in once the others have caught up. Isotropic data with patch axes of 48 voxels
  or more gets today's V-Net (3x3x3 kernels, 2x2x2 strides).
- **Patch size**: start from the median training case, each axis rounded down to a multiple
  of its pooling (so no axis is padded beyond the data); while the memory estimate exceeds the
  target, shrink the axis that is longest in millimetres (ties: the one covering more of the
  median case) by one multiple, dropping that axis' last pooling when fewer than
  :data:`MIN_FEATURE` voxels would remain at the bottleneck, and never below
  :data:`MIN_PATCH` voxels (an axis shorter than that keeps its whole extent, e.g. the 12
  slices of a thick-slice scan). Longest-first keeps the patch close to a cube in
  millimetres, nnU-Net's starting shape.
- **UMIX blocks**: per axis, the largest divisor of the patch size not above 8 (UCMT's
  8 x 8 x 8 blocks wherever the patch allows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from hco_cli.errors import DataError
from hco_cli.models.layout import STAGES

Triple = tuple[int, int, int]
Spacing = tuple[float, float, float]
Layout = tuple[list[Triple], list[Triple]]  # strides (4), kernels (5)
ANISOTROPY = 2.0
MIN_FEATURE = 3
MIN_PATCH = 16  # no patch axis shrinks below this (or below its whole extent when shorter)
UMIX_BLOCKS = 8
Fits = Callable[[Triple, Layout], bool]


def target_spacing(spacings: Sequence[Spacing]) -> Spacing:
    """Median spacing per axis (the thick axis of anisotropic data included)."""
    if not spacings:
        raise DataError("no training cases to plan from")
    x, y, z = (float(v) for v in np.median(np.asarray(spacings, dtype=float), axis=0))
    return (x, y, z)


def layout(spacing: Spacing, sizes: Sequence[float], *, exact: bool = True) -> Layout:
    """Strides and kernels per stage for ``sizes`` voxels at ``spacing``.

    With ``exact``, an axis is pooled only while its size is even (so the strides divide the
    patch); otherwise sizes are real numbers (to find how far an axis can be pooled at all).
    """
    current = [float(s) for s in spacing]
    size = [float(s) for s in sizes]
    strides: list[Triple] = []
    kernels: list[Triple] = []
    for stage in range(STAGES):
        finest = min(current)
        fine = [c <= ANISOTROPY * finest * (1 + 1e-6) for c in current]
        kx, ky, kz = (3 if f else 1 for f in fine)
        kernels.append((kx, ky, kz))
        if stage == STAGES - 1:
            break
        pool = [f and s / 2 >= MIN_FEATURE and (not exact or s % 2 == 0)
                for f, s in zip(fine, size, strict=True)]
        sx, sy, sz = (2 if p else 1 for p in pool)
        strides.append((sx, sy, sz))
        for a, p in enumerate(pool):
            if p:
                current[a] *= 2
                size[a] /= 2
    return strides, kernels


def multiples(strides: Sequence[Triple]) -> Triple:
    """Per axis, the product of the strides."""
    x, y, z = (math.prod(s[a] for s in strides) for a in range(3))
    return (x, y, z)


def data_cap(spacing: Spacing, median_shape: Sequence[float]) -> Triple:
    """The largest patch like the median case: each axis rounded down to its pooling."""
    strides, _ = layout(spacing, median_shape, exact=False)
    m = multiples(strides)
    x, y, z = (max(int(s // k), 1) * k for s, k in zip(median_shape, m, strict=True))
    return (x, y, z)


def _smaller(size: int, multiple: int, floor: int) -> int | None:
    """The next patch size below ``size`` on this axis, or None at the smallest."""
    while multiple >= 1:
        candidate = size - multiple
        if candidate >= max(MIN_FEATURE * multiple, floor, 1):
            return candidate
        if multiple == 1:
            return None
        multiple //= 2
    return None


def plan_patch(spacing: Spacing, median_shape: Sequence[float], fits: Fits) -> tuple[
        Triple, Layout]:
    """The largest patch (and its layout) like the median case for which ``fits`` holds."""
    patch = data_cap(spacing, median_shape)
    floors = [min(size, MIN_PATCH) for size in patch]
    while True:
        plan = layout(spacing, patch)
        if fits(patch, plan):
            return patch, plan
        m = multiples(plan[0])
        order = sorted(range(3), key=lambda a: (patch[a] * spacing[a],
                                                patch[a] / median_shape[a]), reverse=True)
        for axis in order:
            smaller = _smaller(patch[axis], m[axis], floors[axis])
            if smaller is not None:
                as_list = list(patch)
                as_list[axis] = smaller
                patch = (as_list[0], as_list[1], as_list[2])
                break
        else:
            raise DataError(f"no patch fits the memory target (smallest tried: "
                            f"{'x'.join(map(str, patch))}); raise --gpu-memory or lower the "
                            "batch sizes")


def umix_blocks(patch: Triple, blocks: int = UMIX_BLOCKS) -> Triple:
    """Per axis, the largest divisor of the patch size that is at most ``blocks``."""
    x, y, z = (max(d for d in range(1, blocks + 1) if size % d == 0) for size in patch)
    return (x, y, z)
