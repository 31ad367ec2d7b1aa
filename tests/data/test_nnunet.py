"""The nnU-Net v2 export: structure nnU-Net expects, hco's split, and the arrays unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.io import read_volume
from hco_cli.data.nnunet import export_nnunet
from hco_cli.data.prepare import SplitOptions, prepare_la, prepare_synthetic
from hco_cli.errors import DataError, OutputError

NNUNET_KEYS = {"channel_names", "labels", "numTraining", "file_ending"}


def _check_structure(out: Path) -> dict[str, object]:
    """What nnU-Net v2's dataset verification checks, as far as files and names go."""
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert set(meta) >= NNUNET_KEYS
    assert meta["labels"]["background"] == 0
    values = sorted(meta["labels"].values())
    assert values == list(range(len(values)))  # consecutive integers
    channels = len(meta["channel_names"])
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    cases = [name.removesuffix(".nii.gz") for name in labels]
    assert images == sorted(f"{c}_{i:04d}.nii.gz" for c in cases for i in range(channels))
    assert meta["numTraining"] == len(cases)
    [fold] = json.loads((out / "splits_final.json").read_text(encoding="utf-8"))
    assert set(fold) == {"train", "val"}
    covered = fold["train"] + fold["val"]
    assert sorted(covered) == sorted(cases) and len(set(covered)) == len(covered)  # once each
    return {"meta": meta, "fold": fold, "cases": cases}


def test_export_writes_the_split_and_the_prepared_arrays(tmp_path: Path) -> None:
    prepare_synthetic(tmp_path / "ds", labeled=2, unlabeled=2, val=1, test=2, classes=2,
                      shape=(16, 16, 16))
    data = PreparedDataset(tmp_path / "ds")
    result = export_nnunet(tmp_path / "ds", tmp_path / "Dataset501_Syn")
    found = _check_structure(tmp_path / "Dataset501_Syn")
    assert found["fold"] == {"train": data.splits.labeled, "val": data.splits.val}
    assert result.test == data.splits.test and not result.val_is_test
    assert sorted(p.name for p in (tmp_path / "Dataset501_Syn" / "labelsTs").iterdir()) == [
        f"{c}.nii.gz" for c in sorted(data.splits.test)]
    meta = found["meta"]
    assert meta["labels"] == {"background": 0, "organ 1": 1, "organ 2": 2}  # type: ignore[index]
    assert meta["channel_names"] == {"0": "noNorm"}  # type: ignore[index]
    assert meta["hco_label_values"] == [0, 1, 2]  # type: ignore[index]
    case = data.splits.labeled[0]
    image, geometry = read_volume(tmp_path / "Dataset501_Syn" / "imagesTr" / f"{case}_0000.nii.gz")
    np.testing.assert_array_equal(image, data.image(case)[0])
    assert image.dtype == np.float32 and geometry == data.geometry(case).prepared
    label, _ = read_volume(tmp_path / "Dataset501_Syn" / "labelsTr" / f"{case}.nii.gz")
    np.testing.assert_array_equal(label, data.label(case))
    assert set(np.unique(label)) == {0, 1, 2}


def test_without_a_val_split_the_test_cases_validate(tmp_path: Path) -> None:
    prepare_synthetic(tmp_path / "ds", labeled=2, unlabeled=2, test=2, shape=(16, 16, 16),
                      folds_labeled=2, folds_unlabeled=1, fold_size=1)
    data = PreparedDataset(tmp_path / "ds")
    result = export_nnunet(tmp_path / "ds", tmp_path / "nn", fold="L1U0")
    found = _check_structure(tmp_path / "nn")
    assert result.val_is_test and found["fold"] == {
        "train": data.splits.folds.labeled[1], "val": data.splits.test}
    assert not (tmp_path / "nn" / "imagesTs").exists()


def test_ignore_label_is_the_highest_index(tmp_path: Path) -> None:
    prepare_synthetic(tmp_path / "ds", labeled=1, unlabeled=0, test=1, shape=(16, 16, 16))
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))
    info["ignore_label"] = 255  # scribbles: value 255 stored as index K = 3
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    export_nnunet(tmp_path / "ds", tmp_path / "nn")
    labels = _check_structure(tmp_path / "nn")["meta"]["labels"]  # type: ignore[index]
    assert labels == {"background": 0, "organ 1": 1, "organ 2": 2, "ignore": 3}


def test_refusals(tmp_path: Path) -> None:
    prepare_synthetic(tmp_path / "ds", labeled=1, unlabeled=1, test=0, shape=(16, 16, 16))
    with pytest.raises(DataError, match="neither val nor test has any; prepare with --val K"):
        export_nnunet(tmp_path / "ds", tmp_path / "nn")
    prepare_synthetic(tmp_path / "ok", labeled=1, unlabeled=0, test=1, shape=(16, 16, 16))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="already exists and is not empty; use --force"):
        export_nnunet(tmp_path / "ok", tmp_path / "taken")
    # --force replaces only an export hco wrote: the user's folder is left untouched.
    with pytest.raises(OutputError, match="was not written by hco"):
        export_nnunet(tmp_path / "ok", tmp_path / "taken", force=True)
    assert (tmp_path / "taken" / "x").read_text(encoding="utf-8") == "x"
    export_nnunet(tmp_path / "ok", tmp_path / "mine")
    (tmp_path / "mine" / "stale").write_text("x", encoding="utf-8")
    export_nnunet(tmp_path / "ok", tmp_path / "mine", force=True)
    assert not (tmp_path / "mine" / "stale").exists()


def test_left_atrium_export_keeps_the_bcp_split(la_unpacked: Path, tmp_path: Path) -> None:
    prepare_la(la_unpacked, tmp_path / "la", split=SplitOptions(labeled=8), allow_missing=True)
    data = PreparedDataset(tmp_path / "la")
    result = export_nnunet(tmp_path / "la", tmp_path / "Dataset501_LA")
    found = _check_structure(tmp_path / "Dataset501_LA")
    assert result.val_is_test and found["fold"] == {"train": data.splits.labeled,
                                                    "val": data.splits.test}
    assert len(found["cases"]) == 18  # type: ignore[arg-type]
    assert found["meta"]["labels"] == {"background": 0, "left atrium": 1}  # type: ignore[index]
    case = data.splits.test[0]
    label, geometry = read_volume(tmp_path / "Dataset501_LA" / "labelsTr" / f"{case}.nii.gz")
    np.testing.assert_array_equal(label, data.label(case))
    assert geometry.spacing == (0.625, 0.625, 0.625) and geometry == data.geometry(case).original
