"""Resampling, normalisation, cropping and label checks against analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from hco_cli.data.dataset import Geometry
from hco_cli.data.preprocess import (
    apply_box,
    checked_image,
    checked_label,
    crop_box,
    cropped_geometry,
    image_mask,
    normalize,
    otsu_threshold,
    resample,
    resampled_geometry,
)
from hco_cli.errors import DataError


def test_resampled_geometry_keeps_extent_origin_and_direction() -> None:
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    geo = Geometry(shape=(135, 189, 155), spacing=(0.8, 0.8, 0.8), origin=(5.0, 6.0, 7.0),
                   direction=direction)
    new = resampled_geometry(geo, (1.0, 1.0, 1.0))
    assert new.shape == (108, 151, 124)  # round(135 * 0.8), round(151.2), round(124.0)
    assert new.origin == geo.origin and new.direction == direction


def test_linear_resampling_of_a_ramp_is_exact() -> None:
    x = np.arange(20, dtype=np.float32)
    ramp = np.broadcast_to(x[:, None, None], (20, 4, 4)).copy()[None]
    geo = Geometry(shape=(20, 4, 4), spacing=(1.0, 1.0, 1.0))
    out, new = resample(ramp, geo, (0.5, 1.0, 1.0), order=1)
    assert new.shape == (40, 4, 4)
    # Voxel i of the new grid sits at old index i/2; the last one is clamped at 19.
    expected = np.minimum(np.arange(40) / 2.0, 19.0)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=1e-5)
    label = (ramp >= 10).astype(np.uint8)
    lab, _ = resample(label, geo, (2.0, 1.0, 1.0), order=0)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    np.testing.assert_array_equal(lab[0, :, 0, 0], (np.arange(10) * 2 >= 10).astype(np.uint8))


def test_normalisations() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 7.0, (2, 8, 8, 8)).astype(np.float32)
    z = normalize(image, "zscore", window=(0, 1))
    np.testing.assert_allclose(z.reshape(2, -1).mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(2, -1).std(1), 1.0, atol=1e-5)
    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0], dtype=np.float32).reshape(1, 5, 1, 1)
    ct = normalize(hu, "ct", window=(-125.0, 275.0))
    np.testing.assert_allclose(ct.ravel(), [0.0, 0.0, 0.5, 1.0, 1.0])
    flat = normalize(np.full((1, 2, 2, 2), 3.0, np.float32), "zscore", window=(0, 1))
    np.testing.assert_array_equal(flat, 0.0)


def test_crop_box_margin_clipping_and_min_size() -> None:
    mask = np.zeros((50, 40, 30), dtype=bool)
    mask[10:20, 5:8, 20:25] = True
    assert crop_box(mask, margin=3, min_size=None) == ((7, 23), (2, 11), (17, 28))
    # Margin clipped at the border; min size grows about the centre, shifted inside.
    box = crop_box(mask, margin=3, min_size=(20, 36, 36))
    assert box == ((5, 25), (0, 36), (-3, 33))
    image = np.arange(50 * 40 * 30, dtype=np.float32).reshape(1, 50, 40, 30)
    cropped = apply_box(image, box, fill=np.array([-1.0]))
    assert cropped.shape == (1, 20, 36, 36)
    np.testing.assert_array_equal(cropped[0, :, :, 3:33], image[0, 5:25, 0:36, :])
    assert (cropped[0, :, :, :3] == -1).all() and (cropped[0, :, :, 33:] == -1).all()
    geo = Geometry(shape=(50, 40, 30), spacing=(2.0, 1.0, 0.5), origin=(1.0, 1.0, 1.0),
                   direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    new = cropped_geometry(geo, box)
    assert new.shape == (20, 36, 36)
    assert new.origin == pytest.approx((1.0 - 10.0, 1.0, 1.0 - 1.5))


def test_label_checks() -> None:
    ok = checked_label(np.array([[[0.0, 2.0]]]), case="a", path="l.nii", allowed=None)
    assert ok.dtype == np.uint8
    wide = checked_label(np.array([[[0, 300]]]), case="a", path="l", allowed=None)
    assert wide.dtype == np.uint16
    with pytest.raises(DataError, match=r"case a: label l\.nii has non-integer values"):
        checked_label(np.array([[[0.5]]]), case="a", path="l.nii", allowed=None)
    with pytest.raises(DataError, match="negative"):
        checked_label(np.array([[[-1, 0]]]), case="a", path="l", allowed=None)
    with pytest.raises(DataError, match=r"values \[3\] that are not classes"):
        checked_label(np.array([[[0, 3]]]), case="a", path="l", allowed=frozenset({0, 1}))
    with pytest.raises(DataError, match=r"case b: image i\.nii has 1 NaN or Inf"):
        checked_image(np.array([[[[np.nan, 1.0]]]]), case="b", path="i.nii")


def test_image_masks_and_otsu_threshold() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 3.0, (1, 30, 20, 10)).astype(np.float32)
    image[0, 5:25, 4:16, 2:8] += 100.0
    image[0, 0, 0, 0] = 60.0  # one bright noise voxel: not part of the body
    mask = image_mask(image, "otsu")
    assert crop_box(mask, margin=0, min_size=None) == ((5, 25), (4, 16), (2, 8))
    assert 20.0 < otsu_threshold(image[0]) < 80.0
    zero_padded = np.zeros((2, 12, 12, 12), np.float32)
    zero_padded[1, 3:7, 2:9, 5:6] = -4.0  # any channel counts
    assert crop_box(image_mask(zero_padded, "nonzero"), margin=1, min_size=None) == (
        (2, 8), (1, 10), (4, 7))
    assert otsu_threshold(np.full((3, 3), 2.0)) == 2.0
    assert not image_mask(np.full((1, 3, 3, 3), 2.0, np.float32), "otsu").any()
