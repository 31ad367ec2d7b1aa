"""Mapping predictions from the prepared grid back onto the original grid."""

from __future__ import annotations

import numpy as np
import pytest

from hco_cli.data.dataset import Geometry
from hco_cli.errors import DataError
from hco_cli.inference.resample import index_mapping, same_grid, to_original_grid

# A reference only; the GPU image has no SimpleITK, so there this module is skipped.
sitk = pytest.importorskip("SimpleITK")


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _geometry(shape, spacing, origin, direction: np.ndarray | None = None) -> Geometry:
    d = np.eye(3) if direction is None else direction
    return Geometry(shape=shape, spacing=spacing, origin=origin,
                    direction=tuple(float(v) for v in d.reshape(-1)))


def _sitk_nearest(labels: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Independent reference: SimpleITK nearest-neighbour resampling, default value 0."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    image.SetSpacing(source.spacing)
    image.SetOrigin(source.origin)
    image.SetDirection(source.direction)
    reference = sitk.Image([int(v) for v in target.shape], image.GetPixelID())
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _random_labels(shape, seed: int = 0, classes: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=shape).astype(np.uint8)


def test_identity_is_bit_identical_copy() -> None:
    geometry = _geometry((7, 5, 3), (0.7, 0.7, 1.3), (-4.0, 12.5, 3.0),
                         np.diag([-1.0, 1.0, -1.0]))
    labels = _random_labels(geometry.shape).astype(np.uint16) * 300
    out = to_original_grid(labels, prepared=geometry, original=geometry)
    assert out.dtype == labels.dtype
    assert np.array_equal(out, labels)
    assert not np.shares_memory(out, labels)
    assert same_grid(geometry, geometry)


def test_crop_offset_places_labels_and_zeros_outside() -> None:
    direction = np.diag([-1.0, -1.0, 1.0])
    original = _geometry((10, 12, 8), (0.5, 0.5, 1.0), (20.0, -3.0, 7.0), direction)
    start = np.array([2, 3, 1])
    corner = np.asarray(original.origin) + direction @ (np.asarray(original.spacing) * start)
    prepared = _geometry((5, 7, 5), original.spacing, tuple(corner), direction)
    labels = _random_labels(prepared.shape, seed=1)
    out = to_original_grid(labels, prepared=prepared, original=original)
    expected = np.zeros(original.shape, dtype=np.uint8)
    expected[2:7, 3:10, 1:6] = labels
    assert np.array_equal(out, expected)


def test_twice_the_spacing_repeats_each_voxel() -> None:
    original = _geometry((12, 9, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    # Prepared voxel centres sit at 0.25 + 2k mm: each original voxel has one nearest voxel.
    prepared = _geometry((6, 5, 3), (2.0, 2.0, 2.0), (0.25, 0.25, 0.25))
    labels = _random_labels(prepared.shape, seed=2)
    out = to_original_grid(labels, prepared=prepared, original=original)
    index = [np.clip(np.floor((np.arange(n) - 0.25) / 2 + 0.5).astype(int), 0, None)
             for n in original.shape]
    assert np.array_equal(out, labels[np.ix_(*index)])
    assert np.array_equal(out, _sitk_nearest(labels, prepared, original))


def test_twice_the_spacing_ties_round_up_consistently() -> None:
    original = _geometry((8, 8, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    prepared = _geometry((4, 4, 2), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    labels = np.arange(32, dtype=np.uint8).reshape(4, 4, 2)
    out = to_original_grid(labels, prepared=prepared, original=original)
    # Original voxel i sits at prepared index i/2; odd i are ties and go to (i+1)/2.
    index = [np.minimum((np.arange(n) + 1) // 2, m - 1)
             for n, m in zip((8, 8, 4), (4, 4, 2), strict=True)]
    expected = labels[np.ix_(*index)]
    expected[7, :, :] = 0  # index 3.5 rounds to 4, outside the prepared grid
    expected[:, 7, :] = 0
    expected[:, :, 3] = 0
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("prepared_rotation", [0.0, 17.0], ids=["aligned", "rotated-grid"])
def test_oblique_flipped_matches_simpleitk(prepared_rotation: float) -> None:
    base = _rotation_z(30.0) @ np.diag([1.0, -1.0, 1.0])
    original = _geometry((30, 26, 14), (0.8, 0.8, 1.5), (-31.0, 44.0, -12.0), base)
    rotated = base @ _rotation_z(prepared_rotation)
    # A crop-and-resample box inside the original field of view, off the half-voxel ties.
    corner = (np.asarray(original.origin)
              + base @ (np.asarray(original.spacing) * np.array([4.3, 3.1, 2.2])))
    prepared = _geometry((14, 12, 7), (1.3, 1.3, 1.3), tuple(corner), rotated)
    labels = _random_labels(prepared.shape, seed=3)
    out = to_original_grid(labels, prepared=prepared, original=original)
    reference = _sitk_nearest(labels, prepared, original)
    assert out.shape == original.shape
    assert np.count_nonzero(out) > 0
    mismatch = np.count_nonzero(out != reference)
    assert mismatch == 0


def test_index_mapping_round_trip() -> None:
    a = _geometry((5, 6, 7), (0.5, 0.6, 2.0), (1.0, 2.0, 3.0), _rotation_z(40.0))
    b = _geometry((9, 9, 9), (1.1, 0.9, 1.7), (-2.0, 5.0, 0.5), _rotation_z(-25.0))
    m_ab, t_ab = index_mapping(a, b)
    m_ba, t_ba = index_mapping(b, a)
    point = np.array([1.5, 2.25, 4.0])
    assert np.allclose(m_ba @ (m_ab @ point + t_ab) + t_ba, point, atol=1e-12)


def test_shape_mismatch_is_a_data_error() -> None:
    geometry = _geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(DataError, match="does not match the prepared geometry"):
        to_original_grid(np.zeros((4, 4, 5), np.uint8), prepared=geometry, original=geometry)
