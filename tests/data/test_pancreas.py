"""Pancreas-CT: the BCP h5 layout with its lists, and raw CT with CoraNet's preprocessing.

No real pancreas data is available here: the tests write small files of the same layout.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import SplitOptions, prepare_pancreas
from hco_cli.errors import DataError


def _h5_layout(root: Path, present: list[str]) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in present:
        with h5py.File(root / f"{case}.h5", "w") as handle:
            handle["image"] = rng.uniform(0, 1, (24, 20, 16)).astype(np.float32)
            label = np.zeros((24, 20, 16), np.uint8)
            label[8:14, 6:12, 4:10] = 1
            handle["label"] = label
    (root / "train_lab.txt").write_text("0001.h5\n0002.h5\n", encoding="utf-8")
    (root / "train_unlab.txt").write_text("0003.h5\n0004.h5\n0006.h5\n", encoding="utf-8")
    (root / "test.txt").write_text("0005.h5\n", encoding="utf-8")


def test_h5_layout_follows_the_lists(tmp_path: Path) -> None:
    _h5_layout(tmp_path / "src", ["0001", "0002", "0003", "0004", "0005"])
    with pytest.raises(DataError, match=r"case 0006: file not found: .*0006.h5"):
        prepare_pancreas(tmp_path / "src", tmp_path / "out")
    summary = prepare_pancreas(tmp_path / "src", tmp_path / "out", allow_missing=True)
    assert summary.skipped == ["0006"]
    data = PreparedDataset(tmp_path / "out")
    assert data.splits.labeled == ["0001", "0002"]  # all of train_lab.txt by default
    assert data.splits.unlabeled == ["0003", "0004"] and data.splits.test == ["0005"]
    # hco applies no normalisation (the files are windowed upstream), and says so.
    assert data.info.normalization == "none" and data.info.ct_window is None
    assert "windowed to [-125, 275] HU" in str(data.plan().upstream)
    assert data.info.modality == "CT" and data.info.spacing == (1.0, 1.0, 1.0)
    with h5py.File(tmp_path / "src" / "0003.h5", "r") as handle:
        np.testing.assert_array_equal(data.image("0003")[0], handle["image"][()])
        np.testing.assert_array_equal(data.label("0003"), handle["label"][()])
    one = prepare_pancreas(tmp_path / "src", tmp_path / "one", allow_missing=True,
                           split=SplitOptions(labeled=1))
    assert one.splits.labeled == ["0001"] and one.splits.unlabeled[0] == "0002"


def test_raw_ct_gets_coranet_preprocessing(tmp_path: Path) -> None:
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    for case in ("0001", "0002", "0003"):
        ct = np.full((40, 40, 20), -1000.0, np.float32)
        ct[5:35, 5:35, 3:17] = 75.0
        label = np.zeros((40, 40, 20), np.uint8)
        label[15:25, 15:25, 8:12] = 1
        folder = tmp_path / "raw" / f"PANCREAS_{case}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(ct, affine), str(folder / "ct.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "raw" / f"label{case}.nii.gz"))
    summary = prepare_pancreas(tmp_path / "raw", tmp_path / "out", images="PANCREAS_*/ct.nii.gz",
                               labels="label*.nii.gz", split=SplitOptions(labeled=1, test=1))
    data = PreparedDataset(tmp_path / "out")
    assert sorted(data.case_ids()) == ["0001", "0002", "0003"]
    assert summary.info.normalization == "ct"
    geometry = data.geometry("0001")
    assert geometry.original.shape == (40, 40, 20)
    # 1 mm grid: 60 x 60 x 50 voxels; the label box grown by 25 voxels is clipped to the
    # volume, then grown to 96 per axis by zero padding.
    assert geometry.prepared.spacing == (1.0, 1.0, 1.0)
    assert geometry.prepared.shape == (96, 96, 96)
    assert geometry.crop == ((-18, 78), (-18, 78), (-23, 73))
    image, label = data.image("0001")[0], data.label("0001")
    assert image.min() == 0.0 and image.max() == pytest.approx(0.5)
    centre = np.argwhere(label == 1).mean(axis=0).round().astype(int)
    assert image[tuple(centre)] == pytest.approx(0.5)
    assert image[0, 0, 0] == 0.0  # padding
    assert 0.8 < label.sum() / (10 * 10 * 4 * 1.5 * 1.5 * 2.5) < 1.2
