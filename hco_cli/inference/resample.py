"""Mapping a label map from the prepared grid back onto the original scan's grid.

``hco prepare`` may resample a case to the dataset spacing and crop it; a prediction made on
the prepared grid must be written in the original geometry so that it overlays the source scan.
Both grids are voxel lattices in one physical space (ITK/LPS)::

    physical = origin + direction @ (spacing * index)

so each original voxel ``i`` lands at prepared index ``j = M @ i + t``; it takes the label of
the nearest prepared voxel (``round(j)``), or background when that voxel is outside the grid.
"""

from __future__ import annotations

import numpy as np

from hco_cli.data.dataset import Geometry
from hco_cli.errors import DataError

# Contributions below this many voxels (a matrix entry times the axis length) are float noise:
# they let axis-aligned mappings take the separable path and are far below any rounding margin.
_NEGLIGIBLE_VOXELS = 1e-4
# Nearest-neighbour ties (j exactly half-way, as for odd voxels under 2x spacing) go up; the
# offset keeps float noise from splitting a tie one way on some voxels and the other on others.
_TIE_OFFSET = 1e-6
_SLAB_VOXELS = 1 << 22


def voxel_to_physical(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with ``physical = A @ index + b`` for ``geometry``, in float64."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    matrix = direction * np.asarray(geometry.spacing, dtype=np.float64)[None, :]
    return matrix, np.asarray(geometry.origin, dtype=np.float64)


def index_mapping(source: Geometry, target: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) with ``target_index = M @ source_index + t`` for the same physical point."""
    a_src, b_src = voxel_to_physical(source)
    a_tgt, b_tgt = voxel_to_physical(target)
    if abs(np.linalg.det(a_tgt)) < 1e-12:
        raise DataError("degenerate geometry: the direction matrix is singular")
    inverse = np.linalg.inv(a_tgt)
    return inverse @ a_src, inverse @ (b_src - b_tgt)


def same_grid(a: Geometry, b: Geometry) -> bool:
    """True when ``a`` and ``b`` have the same shape and the same voxel centres (to 1e-4 voxel)."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    matrix, offset = index_mapping(a, b)
    extent = np.asarray(a.shape, dtype=np.float64)
    worst = np.abs(matrix - np.eye(3)) @ extent + np.abs(offset)
    return bool(np.all(worst < _NEGLIGIBLE_VOXELS))


def to_original_grid(labels: np.ndarray, *, prepared: Geometry, original: Geometry) -> np.ndarray:
    """Nearest-neighbour copy of ``labels`` (on ``prepared``) onto the ``original`` grid.

    Original voxels whose nearest prepared voxel lies outside the prepared grid (the parts
    removed by cropping) are 0. Identical grids return a bit-identical copy.
    """
    if tuple(labels.shape) != tuple(prepared.shape):
        raise DataError(
            f"prediction shape {tuple(labels.shape)} does not match the prepared geometry "
            f"{tuple(prepared.shape)}"
        )
    if same_grid(original, prepared):
        return np.array(labels, copy=True)
    matrix, offset = index_mapping(original, prepared)
    axes = _axis_pairing(matrix, original.shape)
    if axes is not None:
        return _separable(labels, matrix, offset, axes, original.shape)
    return _general(labels, matrix, offset, original.shape)


def _nearest(coordinate: np.ndarray) -> np.ndarray:
    return np.floor(coordinate + (0.5 + _TIE_OFFSET)).astype(np.int64)


def _axis_pairing(matrix: np.ndarray, shape: tuple[int, int, int]) -> list[int] | None:
    """For axis-aligned mappings, the original axis feeding each prepared axis; else None."""
    contribution = np.abs(matrix) * np.asarray(shape, dtype=np.float64)[None, :]
    significant = contribution >= _NEGLIGIBLE_VOXELS
    if not np.all(significant.sum(axis=1) == 1) or not np.all(significant.sum(axis=0) == 1):
        return None
    return [int(np.argmax(row)) for row in significant]


def _separable(
    labels: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    source_axis: list[int],
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Axis-aligned case: one 1D index table per axis, gathered with ``np.ix_``."""
    prepared_axis = [source_axis.index(a) for a in range(3)]
    moved = labels.transpose(prepared_axis)
    tables, valid = [], []
    for a in range(3):
        k = prepared_axis[a]
        index = _nearest(matrix[k, a] * np.arange(shape[a], dtype=np.float64) + offset[k])
        inside = (index >= 0) & (index < labels.shape[k])
        tables.append(np.where(inside, index, 0))
        valid.append(inside)
    out = moved[np.ix_(*tables)]
    out[~valid[0], :, :] = 0
    out[:, ~valid[1], :] = 0
    out[:, :, ~valid[2]] = 0
    return np.ascontiguousarray(out)


def _general(
    labels: np.ndarray, matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Any affine mapping (oblique or rotated grids), in slabs along the first original axis."""
    out = np.zeros(shape, dtype=labels.dtype)
    grid_y = np.arange(shape[1], dtype=np.float64)[:, None]
    grid_z = np.arange(shape[2], dtype=np.float64)[None, :]
    plane = [matrix[k, 1] * grid_y + matrix[k, 2] * grid_z + offset[k] for k in range(3)]
    step = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
    limits = np.asarray(labels.shape)
    for start in range(0, shape[0], step):
        xs = np.arange(start, min(shape[0], start + step), dtype=np.float64)[:, None, None]
        index = [_nearest(matrix[k, 0] * xs + plane[k][None]) for k in range(3)]
        inside = np.ones(index[0].shape, dtype=bool)
        for k in range(3):
            inside &= (index[k] >= 0) & (index[k] < limits[k])
        slab = out[start : start + step]
        slab[inside] = labels[index[0][inside], index[1][inside], index[2][inside]]
    return out
