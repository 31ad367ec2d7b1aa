"""`hco prepare` never drops a user's case without a word: unlisted raw pancreas scans are
counted as skipped, and an nnU-Net folder whose files do not add up is refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import prepare_generic, prepare_pancreas
from hco_cli.errors import DataError

runner = CliRunner()
SHAPE = (16, 14, 12)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _raw_pancreas(root: Path, cases: list[str], listed: tuple[str, str, str]) -> Path:
    """Raw CT scans of ``cases`` and split lists naming one labeled, unlabeled and test case."""
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    for case in cases:
        ct = np.full((40, 40, 20), -1000.0, np.float32)
        ct[5:35, 5:35, 3:17] = 75.0
        label = np.zeros((40, 40, 20), np.uint8)
        label[15:25, 15:25, 8:12] = 1
        _nifti(root / "raw" / f"PANCREAS_{case}" / "ct.nii.gz", ct, affine)
        _nifti(root / "raw" / f"label{case}.nii.gz", label, affine)
    lists = root / "lists"
    lists.mkdir()
    for name, case in zip(("train_lab.txt", "train_unlab.txt", "test.txt"), listed, strict=True):
        (lists / name).write_text(f"{case}\n", encoding="utf-8")
    return lists


def test_raw_pancreas_scans_the_lists_leave_out_are_counted_as_skipped(tmp_path: Path) -> None:
    cases = ["0001", "0002", "0003", "0004", "0005"]
    lists = _raw_pancreas(tmp_path, cases, ("0001", "0003", "0005"))
    summary = prepare_pancreas(tmp_path / "raw", tmp_path / "out", images="PANCREAS_*/ct.nii.gz",
                               labels="label*.nii.gz", lists=lists)
    assert (summary.splits.labeled, summary.splits.unlabeled, summary.splits.test) == (
        ["0001"], ["0003"], ["0005"])
    assert sorted(summary.skipped) == ["0002", "0004"]
    assert sorted(PreparedDataset(tmp_path / "out").case_ids()) == ["0001", "0003", "0005"]


def test_cli_summary_shows_the_unlisted_scans(tmp_path: Path) -> None:
    lists = _raw_pancreas(tmp_path, ["0001", "0002", "0003", "0004", "0005"],
                          ("0001", "0003", "0005"))
    result = runner.invoke(app, ["prepare", "pancreas", str(tmp_path / "raw"), "--images",
                                 "PANCREAS_*/ct.nii.gz", "--labels", "label*.nii.gz",
                                 "--lists", str(lists), "--out", str(tmp_path / "data" / "ds")])
    assert result.exit_code == 0, result.output
    assert re.search(r"skipped \(absent or unlisted\)\s*\S*\s*2: 0002, 0004\b", result.stdout), \
        result.stdout


def _nnunet(root: Path, n: int = 3, *, num_training: object = None, msd: bool = False) -> Path:
    meta: dict[str, object] = {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz",
                               "numTraining": n if num_training is None else num_training}
    if msd:
        meta["modality"] = {"0": "MRI"}
        meta["labels"] = {"0": "background", "1": "a"}
    else:
        meta["channel_names"] = {"0": "MR"}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 3:9, 2:8] = 1
        image_name = f"c{i}.nii.gz" if msd else f"c{i}_0000.nii.gz"
        _nifti(root / "imagesTr" / image_name, rng.normal(100, 20, SHAPE).astype(np.float32))
        _nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    return root


def test_a_consistent_nnunet_folder_still_prepares(tmp_path: Path) -> None:
    summary = prepare_generic(tmp_path / "out", root=_nnunet(tmp_path / "Dataset001_Toy"))
    assert len(summary.cases) == 3 and not summary.skipped


def test_a_label_without_its_image_is_refused(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", num_training=3)
    (root / "imagesTr" / "c2_0000.nii.gz").unlink()
    orphan = root / "labelsTr" / "c2.nii.gz"
    with pytest.raises(DataError, match=r"^case c2: no image for label " + re.escape(str(orphan))
                       ) as caught:
        prepare_generic(tmp_path / "out", root=root)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_label_without_its_image_is_refused_in_imagests_too(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy")
    _nifti(root / "imagesTs" / "t0_0000.nii.gz", np.ones(SHAPE, np.float32))
    _nifti(root / "labelsTs" / "t0.nii.gz", np.ones(SHAPE, np.uint8))
    _nifti(root / "labelsTs" / "t1.nii.gz", np.ones(SHAPE, np.uint8))
    with pytest.raises(DataError, match=r"^case t1: no image for label .*labelsTs/t1\.nii\.gz"):
        prepare_generic(tmp_path / "out", root=root)


def test_test_labels_without_an_images_folder_are_refused(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy")
    _nifti(root / "labelsTs" / "t0.nii.gz", np.ones(SHAPE, np.uint8))
    with pytest.raises(DataError, match=r"labelsTs: test labels without an imagesTs folder "
                                        r"beside them \(") as caught:
        prepare_generic(tmp_path / "out", root=root)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("declared", [5, 2, "5"], ids=["more", "fewer", "text"])
def test_num_training_must_match_the_cases_found(tmp_path: Path, declared: object) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", num_training=declared)
    with pytest.raises(DataError, match=rf"dataset\.json says numTraining {declared}, "
                                        r"imagesTr/labelsTr hold 3 cases$") as caught:
        prepare_generic(tmp_path / "out", root=root)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("msd", [False, True])
def test_two_files_of_one_channel_are_refused(tmp_path: Path, msd: bool) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", msd=msd)
    name = "c0" if msd else "c0_0000"
    stale = root / "imagesTr" / f"{name}.nii"
    _nifti(stale, np.zeros(SHAPE, np.float32))
    fresh = root / "imagesTr" / f"{name}.nii.gz"
    with pytest.raises(DataError, match=r"^case c0: two files of channel 0: ") as caught:
        prepare_generic(tmp_path / "out", root=root)
    message = str(caught.value)
    assert str(stale) in message and str(fresh) in message and "\n" not in message


def test_two_label_files_of_one_case_are_refused(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy")
    stale = root / "labelsTr" / "c1.nii"
    _nifti(stale, np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match=r"^case c1: two label files: ") as caught:
        prepare_generic(tmp_path / "out", root=root)
    assert str(stale) in str(caught.value)
    assert str(root / "labelsTr" / "c1.nii.gz") in str(caught.value)


@pytest.mark.parametrize("damage", ["orphan", "count", "stale"])
def test_cli_refuses_in_one_line(tmp_path: Path, damage: str) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", num_training=4 if damage == "count" else None)
    if damage == "orphan":
        _nifti(root / "labelsTr" / "c9.nii.gz", np.ones(SHAPE, np.uint8))
    elif damage == "stale":
        _nifti(root / "imagesTr" / "c0_0000.nii", np.zeros(SHAPE, np.float32))
    result = runner.invoke(app, ["prepare", "generic", str(root),
                                 "--out", str(tmp_path / "data" / "ds")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output


@pytest.mark.parametrize("msd", [False, True])
def test_a_label_is_found_whatever_its_volume_extension(tmp_path: Path, msd: bool) -> None:
    """An image ``c1_0000.nii.gz`` (MSD: ``c1.nii.gz``) with the label ``c1.nii``: that is the
    case's label, not a missing one."""
    root = _nnunet(tmp_path / "Dataset001_Toy", msd=msd)
    gz = root / "labelsTr" / "c1.nii.gz"
    label = np.asarray(nib.load(str(gz)).dataobj)
    gz.unlink()
    _nifti(root / "labelsTr" / "c1.nii", label)
    summary = prepare_generic(tmp_path / "out", root=root)
    assert len(summary.cases) == 3 and all(c.has_label for c in summary.cases)
    geometry = PreparedDataset(tmp_path / "out").geometry("c1")
    assert geometry.source_label == str((root / "labelsTr" / "c1.nii").absolute())


def test_a_case_without_any_label_file_is_named_with_its_folder(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", num_training=3)
    (root / "labelsTr" / "c2.nii.gz").unlink()
    with pytest.raises(DataError) as caught:
        prepare_generic(tmp_path / "out", root=root)
    assert str(caught.value) == (
        f"case c2: no label file c2.<ext> in {root / 'labelsTr'} (.nii.gz, .nii, .nrrd, .mha, "
        f"...) for image {root / 'imagesTr' / 'c2_0000.nii.gz'}")


def test_msd_multi_modality_4d_images_are_refused_with_the_way_out(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Task05_Prostate", msd=True)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta["modality"] = {"0": "T2", "1": "ADC"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        prepare_generic(tmp_path / "out", root=root)
    message = str(caught.value)
    assert message.startswith(f"{root / 'dataset.json'}: MSD 'modality' names 2 channels, "
                              "stored as one 4D image a case, which hco does not read")
    assert "<case>_0000, <case>_0001" in message and "channel_names" in message
    assert "\n" not in message and "expected 0..1" not in message
