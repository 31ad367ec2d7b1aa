"""A prepared dataset's identity: stable over re-preparation, and each part tells its change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hco_cli.data import identity
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.identity import (
    BLOCK_BYTES,
    IMAGE_BLOCKS,
    PARTS,
    changed_parts,
    dataset_identity,
)
from hco_cli.data.prepare import prepare_synthetic

SHAPE = (40, 40, 16)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("identity") / "syn"
    prepare_synthetic(out, labeled=2, unlabeled=2, val=1, test=1, classes=2, shape=SHAPE)
    return out


@pytest.fixture()
def copy(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "copy"))


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _rewrite(path: Path, change: dict) -> None:
    path.write_text(json.dumps({**_json(path), **change}, indent=2), encoding="utf-8")


def test_preparing_the_same_data_again_gives_the_same_identity(prepared: Path,
                                                               tmp_path: Path) -> None:
    again = tmp_path / "again"
    prepare_synthetic(again, labeled=2, unlabeled=2, val=1, test=1, classes=2, shape=SHAPE)
    first = dataset_identity(prepared)
    assert sorted(first) == sorted(PARTS)
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in first.values())
    assert dataset_identity(PreparedDataset(again)) == first
    assert changed_parts(first, dataset_identity(again)) == []


def test_other_phantoms_under_the_same_ids_change_the_cases(prepared: Path,
                                                             tmp_path: Path) -> None:
    other = tmp_path / "other"
    prepare_synthetic(other, labeled=2, unlabeled=2, val=1, test=1, classes=2, shape=SHAPE,
                      seed=1)
    assert PreparedDataset(other).case_ids() == PreparedDataset(prepared).case_ids()
    assert changed_parts(dataset_identity(prepared), dataset_identity(other)) == ["cases"]


def test_where_and_by_which_version_it_was_prepared_is_no_change(prepared: Path,
                                                                  copy: Path) -> None:
    _rewrite(copy / "dataset.json", {"name": "renamed", "hco_version": "0.0.0",
                                     "source": "/elsewhere"})
    plan = _json(copy / "plans.json")
    plan["patch_size"] = [16, 16, 16]  # what a run copies in; the network plan alike
    (copy / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    assert dataset_identity(copy) == dataset_identity(prepared)


def test_each_part_names_its_own_change(prepared: Path, copy: Path) -> None:
    before = dataset_identity(prepared)
    splits = _json(copy / "splits.json")
    splits["labeled"], splits["unlabeled"] = (splits["labeled"][:1],
                                              splits["labeled"][1:] + splits["unlabeled"])
    (copy / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    assert changed_parts(before, dataset_identity(copy)) == ["splits"]

    _rewrite(copy / "dataset.json", {"modality": "CT"})
    assert changed_parts(before, dataset_identity(copy)) == ["labels", "splits"]

    plan = _json(copy / "plans.json")
    plan["preprocess"]["norm"] = "none"
    (copy / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    assert changed_parts(before, dataset_identity(copy)) == ["labels", "splits",
                                                             "preprocessing"]


def test_one_label_voxel_changes_the_cases(prepared: Path, copy: Path) -> None:
    data = PreparedDataset(copy)
    case = next(c for c in data.case_ids() if data.has_label(c))
    label = np.load(copy / "cases" / f"{case}_label.npy")
    label[5, 7, 3] = 1 - min(int(label[5, 7, 3]), 1)  # one voxel anywhere: labels are read whole
    np.save(copy / "cases" / f"{case}_label.npy", label)
    assert changed_parts(dataset_identity(prepared), dataset_identity(copy)) == ["cases"]


def test_labels_beyond_the_budget_are_sampled(prepared: Path, copy: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the label budget one voxel between the sampled blocks goes unseen, a block's
    doesn't (the labels here are 25.6 KB each: 64 blocks of 4 KiB overlap and cover them, so
    the budget test writes a label large enough to leave gaps)."""
    data = PreparedDataset(copy)
    case = next(c for c in data.case_ids() if data.has_label(c))
    path = copy / "cases" / f"{case}_label.npy"
    np.save(path, np.zeros((512, 512, 8), np.uint8))  # 2 MiB: gaps between 64 blocks
    before = dataset_identity(copy)
    monkeypatch.setattr(identity, "LABEL_BYTES_WHOLE", 1)
    sampled = dataset_identity(copy)
    array = np.load(path)
    array[256, 256, 4] = 1  # the middle of the file, between two blocks
    np.save(path, array)
    assert dataset_identity(copy) == sampled
    monkeypatch.setattr(identity, "LABEL_BYTES_WHOLE", 2 * 1024**3)
    assert changed_parts(before, dataset_identity(copy)) == ["cases"]
    array[0, 0, 0] = 1  # the first block
    np.save(path, array)
    monkeypatch.setattr(identity, "LABEL_BYTES_WHOLE", 1)
    assert changed_parts(sampled, dataset_identity(copy)) == ["cases"]


def test_images_are_sampled_from_start_to_end(prepared: Path, copy: Path) -> None:
    data = PreparedDataset(copy)
    case = data.case_ids()[0]
    path = copy / "cases" / f"{case}_image.npy"
    size = path.stat().st_size
    assert size > IMAGE_BLOCKS * BLOCK_BYTES  # so that the blocks leave gaps between them
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # the last byte lies in the last block
    path.write_bytes(bytes(raw))
    assert changed_parts(dataset_identity(prepared), dataset_identity(copy)) == ["cases"]

    shutil.copy(prepared / "cases" / f"{case}_image.npy", path)
    image = np.load(path)
    np.save(path, image * 2.0)  # another intensity mapping moves every voxel
    assert changed_parts(dataset_identity(prepared), dataset_identity(copy)) == ["cases"]


def test_a_part_only_one_side_has_counts_as_changed() -> None:
    assert changed_parts({"labels": "a", "splits": "b"}, {"labels": "a"}) == ["splits"]
