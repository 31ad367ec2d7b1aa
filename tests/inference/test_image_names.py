"""Case ids from file names: nnU-Net channel tags on images, whole names elsewhere."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.io import case_id_from_path, channel_tag
from hco_cli.data.sources.generic import case_ids
from hco_cli.errors import DataError
from hco_cli.evaluation.evaluate import evaluate_folders
from hco_cli.inference.inputs import group_images


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def _names(groups: dict[str, tuple[Path, ...]]) -> dict[str, list[str]]:
    return {k: [p.name for p in v] for k, v in groups.items()}


def test_ids_and_tags() -> None:
    assert case_id_from_path(Path("a/amos_0001.nii.gz")) == "amos_0001"
    assert case_id_from_path(Path("scan.nrrd")) == "scan"
    assert channel_tag("case_0001") == ("case", 1)
    assert channel_tag("case_001") is None and channel_tag("_0001") is None


def test_numbered_scans_are_cases_of_their_own(tmp_path: Path) -> None:
    _touch(tmp_path, "scan_2023.nii.gz", "scan_2024.nii.gz", "amos_0001.nii.gz")
    assert _names(group_images([tmp_path], channels=1)) == {
        "amos_0001": ["amos_0001.nii.gz"], "scan_2023": ["scan_2023.nii.gz"],
        "scan_2024": ["scan_2024.nii.gz"]}


def test_channel_tags_group_where_channel_0_is_there(tmp_path: Path) -> None:
    _touch(tmp_path, "p1_0000.nii.gz", "p1_0001.nii.gz", "solo_0000.nii.gz")
    assert _names(group_images([tmp_path / "p1_0000.nii.gz", tmp_path / "p1_0001.nii.gz"],
                               channels=2)) == {"p1": ["p1_0000.nii.gz", "p1_0001.nii.gz"]}
    assert _names(group_images([tmp_path / "solo_0000.nii.gz"], channels=1)) == {
        "solo": ["solo_0000.nii.gz"]}
    # two channels given to a one-channel model: refused, not predicted as two cases
    with pytest.raises(DataError, match="case p1: 2 image file"):
        group_images([tmp_path / "p1_0000.nii.gz", tmp_path / "p1_0001.nii.gz"], channels=1)


def test_one_file_name_in_several_folders_is_named_by_its_folder(tmp_path: Path) -> None:
    for case in ("GA21", "GA30"):
        _touch(tmp_path / case, "srr.nii.gz")
    assert _names(group_images([Path(f"{tmp_path}/*/srr.nii.gz")], channels=1)) == {
        "GA21": ["srr.nii.gz"], "GA30": ["srr.nii.gz"]}


def test_nested_folders_name_cases_as_prepare_does(tmp_path: Path) -> None:
    """site1/caseA, site2/caseA and site1/caseB: the folder names repeat, so every id gets
    its next folder up in front, as hco prepare's ids of 'nest/*/*/srr.nii.gz' (the same
    rule: data.sources.generic.case_ids)."""
    for site, case in (("site1", "caseA"), ("site2", "caseA"), ("site1", "caseB")):
        _touch(tmp_path / "nest" / site / case, "srr.nii.gz")
    files = sorted((tmp_path / "nest").glob("*/*/srr.nii.gz"))
    expected = case_ids("nest/*/*/srr.nii.gz",
                        [p.relative_to(tmp_path).as_posix() for p in files])
    groups = group_images([Path(f"{tmp_path}/nest/*/*/srr.nii.gz")], channels=1)
    assert sorted(groups) == sorted(expected) == ["site1_caseA", "site1_caseB", "site2_caseA"]
    assert groups["site2_caseA"] == (tmp_path / "nest" / "site2" / "caseA" / "srr.nii.gz",)


def test_evaluate_pairs_numbered_cases_by_their_whole_name(tmp_path: Path) -> None:
    box = np.zeros((8, 8, 8), np.uint8)
    box[2:6, 2:6, 2:6] = 1
    for folder in ("preds", "labels"):
        (tmp_path / folder).mkdir()
    for i, shift in ((1, 0), (2, 1)):
        nib.save(nib.Nifti1Image(box, np.eye(4)), str(tmp_path / "labels" / f"amos_000{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.roll(box, shift, axis=0), np.eye(4)),
                 str(tmp_path / "preds" / f"amos_000{i}.nii.gz"))
    summary = evaluate_folders(tmp_path / "preds", tmp_path / "labels")
    dice = {r.case: r.metrics["1"]["dice"] for r in summary.cases}
    assert dice == pytest.approx({"amos_0001": 1.0, "amos_0002": 0.75})
