"""Dice, Jaccard, HD95 and ASD per case and class, with medpy 0.5.2's exact definitions.

The semi-supervised segmentation literature (UA-MT, BCP, the HCO paper) reports
``medpy.metric.binary`` ``dc``, ``jc``, ``hd95`` and ``asd``; these functions reproduce their
values (to rounding) without importing medpy, tens of times faster (``benchmarks/metrics.py``):

- surface of a mask X: ``X xor binary_erosion(X, 6-neighbourhood, border_value=0)``, so a
  voxel on the array edge is always surface;
- directed distances d(A->B): from each surface voxel centre of A to the nearest surface voxel
  centre of B, Euclidean, scaled by ``spacing``;
- ``asd(pred, gt)`` = mean of d(pred->gt) (one-directional, prediction to reference);
- ``hd95(pred, gt)`` = ``numpy.percentile`` (linear interpolation) of d(pred->gt) and
  d(gt->pred) pooled together; not the maximum of two directed percentiles.

Speed comes from working inside the bounding box of both masks only, instead of three
full-volume distance transforms: surfaces come from six shifted ANDs, most nearest neighbours
from probing grid offsets in order of length (exact: the first hit is the nearest), and the
few left (parts of one mask far from the other) from all pairs, or from a k-d tree on physical
coordinates when they are many.

Empty masks (medpy raises or returns NaN): two policies, chosen with ``empty``:

- ``"nan"`` (default): both empty: every metric NaN; exactly one empty: Dice = Jaccard = 0 and
  HD95 = ASD = NaN. NaN values are left out of means and counted as excluded.
- ``"bcp"``: an empty prediction scores Dice = Jaccard = HD95 = ASD = 0, as the UA-MT/BCP test
  code does (the best possible distances: flattering, reproduce only to compare with those
  papers); an empty reference with a non-empty prediction is scored as under ``"nan"``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Literal, get_args

import numpy as np

from hco_cli.errors import ConfigError, DataError

EmptyPolicy = Literal["nan", "bcp"]
EMPTY_POLICIES: tuple[str, ...] = get_args(EmptyPolicy)
METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
NAN = float("nan")
# Surface voxels left beyond the probing ball (parts of one mask far from the other) are
# measured against every surface voxel of the other mask while that is at most this many pairs
# (about 6 ms on one core), and with a k-d tree above: importing scipy.spatial alone costs
# about 0.15 s, more than the whole evaluation of a typical case.
_BRUTE_FORCE_PAIRS = 1 << 22
_BRUTE_FORCE_BLOCK = 1 << 16  # pairs per block: the temporaries stay in cache


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P∩G| / (|P| + |G|) of two masks (non-zero is foreground); NaN if both are empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return 2.0 * int(np.count_nonzero(p & g)) / total if total else NAN


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index |P∩G| / |P∪G| of two masks; NaN if both are empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    union = int(np.count_nonzero(p | g))
    return int(np.count_nonzero(p & g)) / union if union else NAN


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, *, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (d(pred->gt), d(gt->pred)); empty arrays if a mask is empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise DataError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    scale = _spacing(spacing, p.ndim)
    box_p, box_g = _bounding_box(p), _bounding_box(g)
    if box_p is None or box_g is None:
        return np.empty(0), np.empty(0)
    crop_p, crop_g = _padded_crops(p, g, box_p, box_g, scale)
    return _crop_distances(crop_p, crop_g, scale, scratch=np.empty_like(crop_p))


def hd95(pred: np.ndarray, gt: np.ndarray, *, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of both directed distances pooled (medpy's hd95); NaN if a mask is empty."""
    d_pg, d_gp = surface_distances(pred, gt, spacing=spacing)
    return _pooled_p95(d_pg, d_gp)


def asd(pred: np.ndarray, gt: np.ndarray, *, spacing: Sequence[float] | None = None) -> float:
    """Mean distance from the prediction's surface to the reference's; medpy's asd; NaN if empty."""
    d_pg, _ = surface_distances(pred, gt, spacing=spacing)
    return float(d_pg.mean()) if len(d_pg) else NAN


def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    empty: EmptyPolicy = "nan",
) -> dict[str, float]:
    """All four metrics of one binary pair, from one surface extraction per mask.

    ``empty`` chooses the empty-mask policy described in the module docstring.
    """
    check_empty_policy(empty)
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise DataError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    scale = _spacing(spacing, p.ndim)  # validated even when an empty mask short-cuts
    box_p, box_g = _bounding_box(p), _bounding_box(g)
    if box_p is None or box_g is None:
        return _empty_metrics(box_p is None, box_g is None, empty)
    return _crop_metrics(*_padded_crops(p, g, box_p, box_g, scale), scale)


def evaluate_pair(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    classes: Iterable[int],
    spacing: Sequence[float] | None = None,
    empty: EmptyPolicy = "nan",
) -> dict[str, dict[str, float]]:
    """Metrics of one case per foreground class c (``pred == c`` vs ``gt == c``).

    Returns ``{str(c): {"dice", "jaccard", "hd95", "asd"}}``; Dice and Jaccard are fractions,
    distances are in voxels when ``spacing`` is None and in the unit of ``spacing`` otherwise.
    Each class's masks are written straight into crops of the box of both maps' non-zero
    voxels, then cut further to the class's own box where that is smaller: the same crops,
    hence the same values, as :func:`binary_metrics` of ``pred == c`` and ``gt == c``, without
    two whole-volume masks per class.
    """
    pred, gt = np.atleast_1d(np.asarray(pred)), np.atleast_1d(np.asarray(gt))
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from label shape {gt.shape}")
    boxes = [b for b in (_bounding_box(pred), _bounding_box(gt)) if b is not None]
    window = _union_box(*boxes) if boxes else None
    out: dict[str, dict[str, float]] = {}
    for c in classes:
        if int(c) == 0:
            raise ConfigError("class 0 is background and cannot be evaluated")
        check_empty_policy(empty)
        scale = _spacing(spacing, pred.ndim)
        out[str(int(c))] = _empty_metrics(True, True, empty) if window is None else \
            _class_metrics(pred, gt, c, window, scale, empty)
    return out


def _class_metrics(
    pred: np.ndarray, gt: np.ndarray, c: int, window: list[tuple[int, int]],
    scale: np.ndarray, empty: EmptyPolicy,
) -> dict[str, float]:
    """binary_metrics(pred == c, gt == c) for maps whose non-zero voxels lie in ``window``."""
    crop_p, inner = _padded_crop(pred, window, scale, value=c)
    crop_g, _ = _padded_crop(gt, window, scale, value=c)
    box_p, box_g = _bounding_box(crop_p), _bounding_box(crop_g)
    if box_p is None or box_g is None:
        return _empty_metrics(box_p is None, box_g is None, empty)
    if _union_box(box_p, box_g) != inner:
        crop_p, crop_g = _padded_crops(crop_p, crop_g, box_p, box_g, scale)  # the class's box
    return _crop_metrics(crop_p, crop_g, scale)


def _empty_metrics(pred_empty: bool, gt_empty: bool, empty: EmptyPolicy) -> dict[str, float]:
    """The values of a pair where at least one mask is empty (the module's policies)."""
    if pred_empty and empty == "bcp":
        return dict.fromkeys(METRICS, 0.0)
    overlap = NAN if pred_empty and gt_empty else 0.0
    return {"dice": overlap, "jaccard": overlap, "hd95": NAN, "asd": NAN}


def _crop_metrics(crop_p: np.ndarray, crop_g: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """The four metrics of two non-empty masks cut by :func:`_padded_crops`.

    Everything works on the crops, which hold every foreground voxel: small, and in one memory
    layout (a NIfTI prediction is Fortran-ordered, an h5 reference C-ordered).
    """
    n_p, n_g = int(np.count_nonzero(crop_p)), int(np.count_nonzero(crop_g))
    scratch = np.logical_and(crop_p, crop_g)  # reused for a surface: one allocation fewer
    inter = int(np.count_nonzero(scratch))
    d_pg, d_gp = _crop_distances(crop_p, crop_g, scale, scratch=scratch)
    return {
        "dice": 2.0 * inter / (n_p + n_g),
        "jaccard": inter / (n_p + n_g - inter),
        "hd95": _pooled_p95(d_pg, d_gp),
        "asd": float(d_pg.mean()),
    }


def check_empty_policy(empty: str) -> None:
    """Raise ConfigError unless ``empty`` names a known empty-mask policy."""
    if empty not in EMPTY_POLICIES:
        raise ConfigError(f"unknown empty-mask policy {empty!r}; use one of {EMPTY_POLICIES}")


def _pooled_p95(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    if len(d_pg) == 0 or len(d_gp) == 0:
        return NAN
    return float(np.percentile(np.concatenate((d_pg, d_gp)), 95))


def _as_bool(mask: np.ndarray) -> np.ndarray:
    array = np.atleast_1d(np.asarray(mask))
    return array if array.dtype == np.bool_ else array.astype(bool)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    scale = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if scale.size != ndim or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ConfigError(f"spacing {tuple(spacing)} must be {ndim} positive numbers")
    return scale


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Index box [lo, hi) per axis of the non-zero voxels, or None for an empty mask (or map).

    Reducing the outermost axis in memory first keeps every pass over the full array
    contiguous (fast): the leading axis of a C-ordered array, the last of a Fortran-ordered one
    (a NIfTI volume), whose box is that of its C-ordered transpose, reversed.
    """
    if mask.ndim > 1 and mask.flags.f_contiguous and not mask.flags.c_contiguous:
        box = _bounding_box(mask.T)
        return None if box is None else box[::-1]
    hits = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))) if mask.ndim > 1 else mask)
    if hits.size == 0:
        return None
    first = (int(hits[0]), int(hits[-1]) + 1)
    if mask.ndim == 1:
        return [first]
    rest = _bounding_box(np.asarray(mask.any(axis=0)))
    return None if rest is None else [first, *rest]


def _padded_crops(
    p: np.ndarray, g: np.ndarray, box_p: list[tuple[int, int]],
    box_g: list[tuple[int, int]], scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, with a zero margin of ``reach + 1``
    (the probing ball's reach per axis), as C-ordered arrays.

    The zero margin is exact for medpy's surfaces: voxels beyond the box are background, or lie
    beyond the array edge where its erosion uses ``border_value=0``. It also keeps every
    neighbour offset of the search ball inside the array.
    """
    box = _union_box(box_p, box_g)
    return _padded_crop(p, box, scale)[0], _padded_crop(g, box, scale)[0]


def _union_box(*boxes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The smallest index box [lo, hi) per axis holding all the given boxes."""
    return [(min(axis[0] for axis in axes), max(axis[1] for axis in axes))
            for axes in zip(*boxes, strict=True)]


def _padded_crop(
    array: np.ndarray, box: list[tuple[int, int]], scale: np.ndarray, *, value: int | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``array`` (or ``array == value``) in ``box``, as a C-ordered bool array with the zero
    margin of :func:`_padded_crops`, and where the box lies in it."""
    margin = [int(m) + 1 for m in _ball(tuple(float(v) for v in scale))[2]]
    shape = tuple(hi - lo + 2 * m for (lo, hi), m in zip(box, margin, strict=True))
    inner = [(m, m + hi - lo) for (lo, hi), m in zip(box, margin, strict=True)]
    crop = np.zeros(shape, dtype=bool)
    source = array[tuple(slice(lo, hi) for lo, hi in box)]
    target = crop[tuple(slice(lo, hi) for lo, hi in inner)]
    if value is None:
        target[...] = source
    else:
        np.equal(source, value, out=target)
    return crop, inner


def _crop_distances(
    crop_p: np.ndarray, crop_g: np.ndarray, scale: np.ndarray, *, scratch: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty masks cut by :func:`_padded_crops`;
    ``scratch``, an array of their shape, is overwritten with the prediction's surface."""
    offsets, lengths, _ = _ball(tuple(float(v) for v in scale))
    border_p, border_g = _border(crop_p, out=scratch), _border(crop_g)
    flat_p, flat_g = np.flatnonzero(border_p), np.flatnonzero(border_g)
    strides = np.array([s // crop_p.itemsize for s in crop_p.strides], dtype=np.int64)
    flat_offsets, shape = offsets @ strides, crop_p.shape
    d_pg = _directed(flat_p, border_g, flat_g, flat_offsets, lengths, shape, scale)
    d_gp = _directed(flat_g, border_p, flat_p, flat_offsets, lengths, shape, scale)
    return d_pg, d_gp


def _border(mask: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``mask xor erosion(mask, 6-neighbourhood)``, flat, for a C-ordered mask whose outer layer
    is all zero (written to ``out`` when given: a C-ordered bool array of the same shape).

    Works on the flat array, where the 6 neighbours of voxel i are i +- stride per axis: one
    long contiguous loop per shift instead of one short loop per row. Only voxels of the outer
    layer have neighbours that wrap around in the flat array, and those are background anyway:
    the first and last ``reach`` voxels (the largest shift) are outer layer, left False.
    """
    flat = mask.reshape(-1)
    border = np.empty(flat.size, dtype=bool) if out is None else out.reshape(-1)
    strides = [s // mask.itemsize for s in mask.strides]
    reach = sum(strides)
    end = flat.size - reach
    border[:reach], border[end:] = False, False
    core = border[reach:end]
    np.copyto(core, flat[reach:end])  # becomes the interior: voxels whose 6 neighbours are set
    for stride in strides:
        core &= flat[reach - stride:end - stride]
        core &= flat[reach + stride:end + stride]
    np.greater(flat[reach:end], core, out=core)  # mask and not interior
    return border


def _directed(
    flat_a: np.ndarray,
    grid_b: np.ndarray,
    flat_b: np.ndarray,
    flat_offsets: np.ndarray,
    lengths: np.ndarray,
    shape: tuple[int, ...],
    scale: np.ndarray,
) -> np.ndarray:
    """Distance from each surface voxel of A (flat indices) to the nearest one of B.

    Offsets are tried in increasing length, so the first hit is the exact nearest distance; the
    few voxels with no B voxel within the ball are measured against all of B's, or with a k-d
    tree on physical coordinates beyond ``_BRUTE_FORCE_PAIRS`` pairs.
    """
    out = np.empty(flat_a.size, dtype=np.float64)
    pending = np.arange(flat_a.size)
    current = flat_a
    for offset, length in zip(flat_offsets.tolist(), lengths.tolist(), strict=True):
        hit = grid_b[current + offset]
        if hit.any():
            out[pending[hit]] = length
            miss = ~hit
            pending, current = pending[miss], current[miss]
            if pending.size == 0:
                return out
    points_b = np.stack(np.unravel_index(flat_b, shape), axis=1) * scale
    points_a = np.stack(np.unravel_index(current, shape), axis=1) * scale
    if current.size * flat_b.size <= _BRUTE_FORCE_PAIRS:
        out[pending] = _nearest_brute_force(points_a, points_b)
        return out
    # Deferred: scipy.spatial takes about 0.15 s to import (a fifth of an `hco evaluate`
    # process on the LA test set), and most predictions never get here.
    from scipy.spatial import cKDTree

    tree = cKDTree(points_b, balanced_tree=False, compact_nodes=False)
    out[pending] = tree.query(points_a, k=1)[0]
    return out


def _nearest_brute_force(points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Distance from each point of A to the nearest point of B, all pairs, in blocks of A.

    The squared distance is summed axis by axis in order, as scipy's k-d tree does, so both
    give the same floating-point distances (exact in voxel units, where coordinates are whole).
    """
    out = np.empty(len(points_a), dtype=np.float64)
    columns_b = [np.ascontiguousarray(points_b[:, k]) for k in range(points_b.shape[1])]
    step = max(1, _BRUTE_FORCE_BLOCK // max(len(points_b), 1))
    for start in range(0, len(points_a), step):
        block = points_a[start:start + step]
        squared = np.subtract.outer(block[:, 0], columns_b[0])
        squared *= squared
        for k in range(1, len(columns_b)):
            diff = np.subtract.outer(block[:, k], columns_b[k])
            diff *= diff
            squared += diff
        out[start:start + step] = np.sqrt(squared.min(axis=1))
    return out


@functools.lru_cache(maxsize=32)
def _ball(
    scale: tuple[float, ...], *, max_offsets: int = 125
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid offsets of a ball sorted by physical length, their lengths, and reach per axis.

    The ball is the largest one (whole shells only) with at most ``max_offsets`` offsets inside
    a radius of three of the coarsest voxel; beyond it a k-d tree is cheaper than more probes.
    """
    s = np.asarray(scale, dtype=np.float64)
    radius = 3.0 * float(s.max())
    half = np.floor(radius / s + 1e-9).astype(np.int64)
    axes = np.meshgrid(*[np.arange(-k, k + 1) for k in half], indexing="ij")
    offsets = np.stack([a.ravel() for a in axes], axis=1)
    lengths = np.sqrt(((offsets * s) ** 2).sum(axis=1))
    order = np.argsort(lengths, kind="stable")
    offsets, lengths = offsets[order], lengths[order]
    keep = lengths <= radius * (1 + 1e-12)
    if keep.sum() > max_offsets:
        keep &= lengths < lengths[max_offsets]
    offsets, lengths = offsets[keep], lengths[keep]
    return offsets, lengths, np.abs(offsets).max(axis=0)
