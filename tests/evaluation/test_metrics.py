"""Metrics against analytic shapes, a brute-force float64 reference, and medpy on real LA masks."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation import metrics
from hco_cli.evaluation.metrics import binary_metrics, evaluate_pair


def reference(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None = None) -> dict:
    """The definition, spelled out: 6-neighbourhood erosion with border_value=0, all pairs."""
    p, g = pred.astype(bool), gt.astype(bool)
    scale = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    footprint = ndimage.generate_binary_structure(p.ndim, 1)

    def surface(m: np.ndarray) -> np.ndarray:
        border = m ^ ndimage.binary_erosion(m, structure=footprint, border_value=0)
        return np.argwhere(border).astype(np.float64) * scale

    pairwise = cdist(surface(p), surface(g))
    d_pg, d_gp = pairwise.min(axis=1), pairwise.min(axis=0)
    inter, n_p, n_g = np.sum(p & g), np.sum(p), np.sum(g)
    return {
        "dice": 2.0 * inter / (n_p + n_g),
        "jaccard": inter / np.sum(p | g),
        "hd95": float(np.percentile(np.concatenate([d_pg, d_gp]), 95)),
        "asd": float(d_pg.mean()),
    }


def assert_close(got: dict, want: dict, *, rtol: float = 1e-9) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=rtol, abs=1e-12), key


def ball(shape: tuple[int, int, int], center: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("spacing", [None, (0.5, 1.0, 2.0)])
def test_plates_shifted_by_k_have_known_distances(k: int, spacing: tuple | None) -> None:
    # Two-voxel-thick plates spanning y and z: every voxel is surface; A's voxels lie k and
    # k-1 voxels from B along x, and vice versa, so hd95 = k and asd = k - 1/2 (times s_x).
    shape = (20, 6, 7)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[4:6] = True
    b[4 + k : 6 + k] = True
    sx = 1.0 if spacing is None else spacing[0]
    got = binary_metrics(a, b, spacing=spacing)
    assert got["hd95"] == pytest.approx(k * sx)
    assert got["asd"] == pytest.approx((k - 0.5) * sx)
    overlap = 1 if k == 1 else 0
    assert got["dice"] == pytest.approx(overlap / 2)
    assert got["jaccard"] == pytest.approx(overlap / (4 - overlap))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_cube_shifted_by_k(k: int) -> None:
    shape = (24, 16, 16)
    a = np.zeros(shape, bool)
    a[3:11, 4:12, 4:12] = True
    b = np.roll(a, k, axis=0)
    d_pg, d_gp = metrics.surface_distances(a, b)
    # The farthest surface voxel of either cube is its trailing face: exactly k away.
    assert d_pg.max() == pytest.approx(k)
    assert d_gp.max() == pytest.approx(k)
    assert_close(binary_metrics(a, b), reference(a, b))
    assert binary_metrics(a, b)["dice"] == pytest.approx(max(8 - k, 0) / 8)


@pytest.mark.parametrize("spacing", [None, (0.625, 0.625, 2.5)])
def test_spheres_of_radius_r_and_r_plus_d(spacing: tuple | None) -> None:
    shape = (40, 40, 40)
    r, d = 9.0, 3.0
    inner, outer = ball(shape, (20, 20, 20), r), ball(shape, (20, 20, 20), r + d)
    got = binary_metrics(inner, outer, spacing=spacing)
    assert_close(got, reference(inner, outer, spacing))
    if spacing is None:
        assert got["asd"] == pytest.approx(d, abs=0.5)
        assert got["hd95"] == pytest.approx(d, abs=0.5)
        assert got["dice"] == pytest.approx(2 * r**3 / (r**3 + (r + d) ** 3), rel=0.05)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_touching_the_edges_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(2, 18, size=3))
    pred = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5
    gt = rng.random(shape) > 0.6
    pred[0], gt[:, -1] = True, True  # whole faces on the array edge
    spacing = tuple(float(v) for v in rng.uniform(0.4, 3.0, size=3))
    assert_close(binary_metrics(pred, gt), reference(pred, gt))
    assert_close(binary_metrics(pred, gt, spacing=spacing), reference(pred, gt, spacing))


def test_full_array_mask_has_only_edge_surface() -> None:
    full = np.ones((5, 6, 7), bool)
    inner = np.zeros_like(full)
    inner[1:-1, 1:-1, 1:-1] = True
    d_pg, d_gp = metrics.surface_distances(full, inner)
    assert d_pg.size == full.size - 3 * 4 * 5  # edge voxels of the full array
    assert d_gp.size == inner.sum() - 1 * 2 * 3
    assert_close(binary_metrics(full, inner), reference(full, inner))


def test_thin_and_two_dimensional_masks() -> None:
    rng = np.random.default_rng(7)
    flat = rng.random((12, 9, 1)) > 0.5
    other = rng.random((12, 9, 1)) > 0.4
    assert_close(binary_metrics(flat, other), reference(flat, other))
    image_a, image_b = rng.random((30, 25)) > 0.5, rng.random((30, 25)) > 0.7
    assert_close(binary_metrics(image_a, image_b, spacing=(0.7, 1.3)),
                 reference(image_a, image_b, (0.7, 1.3)))


def test_distant_blob_beyond_the_search_ball() -> None:
    gt = ball((60, 40, 40), (15, 20, 20), 8)
    pred = gt.copy()
    pred[50:55, 5:9, 30:35] = True
    for spacing in (None, (1.0, 1.0, 4.0)):
        assert_close(binary_metrics(pred, gt, spacing=spacing), reference(pred, gt, spacing))


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3, 2.9)])
def test_far_voxels_all_pairs_and_kd_tree_agree_bit_for_bit(
    spacing: tuple | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(11)
    gt = ball((50, 44, 40), (20, 20, 20), 9)
    pred = ndimage.binary_erosion(gt, iterations=2)
    pred[40:46, 3:8, 30:36] = rng.random((6, 5, 6)) > 0.3  # far from the reference
    all_pairs = metrics.surface_distances(pred, gt, spacing=spacing)
    monkeypatch.setattr(metrics, "_BRUTE_FORCE_PAIRS", 0)  # every far voxel to the k-d tree
    kd_tree = metrics.surface_distances(pred, gt, spacing=spacing)
    assert all_pairs[0].max() > metrics._ball((1.0, 1.0, 1.0))[1][-1]  # some beyond the ball
    for ours, tree in zip(all_pairs, kd_tree, strict=True):
        np.testing.assert_array_equal(ours, tree)


def test_single_metric_functions_agree_with_binary_metrics() -> None:
    a = ball((20, 20, 20), (9, 9, 9), 5)
    b = ball((20, 20, 20), (10, 9, 8), 6)
    both = binary_metrics(a, b, spacing=(1.0, 2.0, 0.5))
    assert metrics.dice(a, b) == both["dice"]
    assert metrics.jaccard(a, b) == both["jaccard"]
    assert metrics.hd95(a, b, spacing=(1.0, 2.0, 0.5)) == both["hd95"]
    assert metrics.asd(a, b, spacing=(1.0, 2.0, 0.5)) == both["asd"]


def test_empty_masks_nan_policy() -> None:
    empty, some = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    some[2:4, 2:4, 2:4] = True
    assert all(math.isnan(v) for v in binary_metrics(empty, empty).values())
    for pred, gt in ((empty, some), (some, empty)):
        got = binary_metrics(pred, gt)
        assert got["dice"] == 0.0 and got["jaccard"] == 0.0
        assert math.isnan(got["hd95"]) and math.isnan(got["asd"])
    assert math.isnan(metrics.dice(empty, empty)) and math.isnan(metrics.jaccard(empty, empty))
    assert math.isnan(metrics.hd95(empty, some)) and math.isnan(metrics.asd(some, empty))


def test_empty_masks_bcp_policy() -> None:
    empty, some = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    some[1:3, 1:5, 2:4] = True
    zeros = {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    assert binary_metrics(empty, some, empty="bcp") == zeros
    assert binary_metrics(empty, empty, empty="bcp") == zeros
    got = binary_metrics(some, empty, empty="bcp")  # empty reference: as under "nan"
    assert got["dice"] == 0.0 and math.isnan(got["hd95"]) and math.isnan(got["asd"])


def test_multi_class_volume_per_class() -> None:
    rng = np.random.default_rng(3)
    gt = np.zeros((30, 28, 26), np.uint8)
    gt[ball(gt.shape, (10, 10, 10), 6)] = 1
    gt[ball(gt.shape, (20, 18, 15), 5)] = 2
    gt[3:9, 18:25, 4:22] = 3
    pred = np.roll(gt, 1, axis=1)
    pred[ndimage.binary_dilation(gt == 2) & (rng.random(gt.shape) > 0.5)] = 2
    spacing = (0.8, 1.0, 1.5)
    got = evaluate_pair(pred, gt, classes=[1, 2, 3], spacing=spacing)
    assert list(got) == ["1", "2", "3"]
    for c in (1, 2, 3):
        assert_close(got[str(c)], reference(pred == c, gt == c, spacing))


@pytest.mark.parametrize("spacing", [None, (0.8, 1.0, 1.5)])
def test_evaluate_pair_equals_binary_metrics_of_each_class_exactly(spacing: tuple | None) -> None:
    # evaluate_pair crops both maps to their non-zero box and recuts each class to its own:
    # the same crops as binary_metrics(pred == c, gt == c), so the same floats.
    gt = np.zeros((40, 36, 30), np.uint8)
    gt[ball(gt.shape, (12, 12, 12), 7)] = 1
    gt[ball(gt.shape, (26, 22, 18), 6)] = 2
    pred = np.asfortranarray(np.roll(gt, (2, -1, 1), axis=(0, 1, 2)))  # as NIfTI reads
    pred[34:38, 2:6, 24:28] = 1  # far from class 1 of the reference
    got = evaluate_pair(pred, gt, classes=[1, 2, 3], spacing=spacing)
    for c in (1, 2):
        assert got[str(c)] == binary_metrics(pred == c, gt == c, spacing=spacing)
    assert all(math.isnan(v) for v in got["3"].values())  # in neither map


def test_invalid_inputs_raise() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(DataError, match="shape"):
        evaluate_pair(a, np.zeros((4, 4, 5), np.uint8), classes=[1])
    with pytest.raises(ConfigError, match="spacing"):
        binary_metrics(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        binary_metrics(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match="empty-mask policy"):
        binary_metrics(a, a, empty="zero")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="background"):
        evaluate_pair(a, a, classes=[0, 1])


def _perturbations(gt: np.ndarray) -> dict[str, np.ndarray]:
    blob = gt.copy()
    blob[2:7, 2:7, 2:7] = True  # far from the atrium, in a corner of the volume
    return {
        "eroded": ndimage.binary_erosion(gt, iterations=2),
        "dilated": ndimage.binary_dilation(gt, iterations=1),
        "shifted": np.roll(gt, (3, -2, 1), axis=(0, 1, 2)),
        "blob": blob,
    }


@pytest.mark.parametrize("index", [0, pytest.param(1, marks=pytest.mark.slow),
                                   pytest.param(2, marks=pytest.mark.slow)])
def test_agrees_with_medpy_on_real_left_atrium_masks(la_unpacked: Path, index: int) -> None:
    """One LA case per parameter (medpy takes about 12 s a case; the default suite checks the
    first, the slow tier the next two)."""
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    folder = sorted((la_unpacked / "2018LA_Seg_Training Set").iterdir())[index]
    with h5py.File(folder / "mri_norm2.h5", "r") as handle:
        gt = handle["label"][:].astype(bool)
    for name, pred in _perturbations(gt).items():
        for spacing in (None, (0.625, 0.625, 2.5)):
            want = {
                "dice": medpy_binary.dc(pred, gt),
                "jaccard": medpy_binary.jc(pred, gt),
                "hd95": medpy_binary.hd95(pred, gt, voxelspacing=spacing),
                "asd": medpy_binary.asd(pred, gt, voxelspacing=spacing),
            }
            got = binary_metrics(pred, gt, spacing=spacing)
            for key, value in want.items():
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (
                    folder.name, name, spacing, key)
