"""LA preparation on the real UA-MT h5 files (parts la-train-00 and la-test-00)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import SplitOptions, prepare_la
from hco_cli.data.sources.la import case_file
from hco_cli.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def la_prepared(la_unpacked: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "la"
    summary = prepare_la(la_unpacked, out, split=SplitOptions(labeled=8), allow_missing=True)
    # train.list names 80 cases and test.list 20; the two parts hold 10 of each.
    assert len(summary.skipped) == 80
    assert len(summary.cases) == 20
    return out


def test_splits_follow_the_protocol(la_unpacked: Path, la_prepared: Path) -> None:
    train = (la_unpacked / "train.list").read_text(encoding="utf-8").split()
    test = (la_unpacked / "test.list").read_text(encoding="utf-8").split()
    splits = PreparedDataset(la_prepared).splits
    assert splits.labeled == train[:8]
    assert splits.labeled[0] == "06SR5RBREL16DQ6M8LWS"
    assert splits.unlabeled == train[8:10]
    assert splits.test == test[:10]
    assert splits.val == []


def test_arrays_equal_the_h5_arrays(la_unpacked: Path, la_prepared: Path) -> None:
    data = PreparedDataset(la_prepared)
    assert data.info.spacing == (0.625, 0.625, 0.625)
    assert data.info.classes == {"0": "background", "1": "left atrium"}
    assert data.num_classes == 2
    for case in data.case_ids():
        with h5py.File(case_file(la_unpacked, case), "r") as handle:
            image, label = handle["image"][()], handle["label"][()]
        stored = data.image(case)
        assert stored.dtype == np.float32 and stored.shape == (1, *image.shape)
        np.testing.assert_array_equal(stored[0], image)
        assert data.label(case).dtype == np.uint8
        np.testing.assert_array_equal(data.label(case), label)
        geometry = data.geometry(case)
        assert geometry.prepared.spacing == (0.625, 0.625, 0.625)
        assert geometry.prepared == geometry.original and geometry.crop is None


def test_missing_cases_are_an_error_by_default(la_unpacked: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"case \w+: file not found: .*mri_norm2.h5"):
        prepare_la(la_unpacked, tmp_path / "la")
    assert not (tmp_path / "la").exists()


def test_val_and_fold_grid(la_unpacked: Path, tmp_path: Path) -> None:
    split = SplitOptions(labeled=2, val=2, seed=3, folds_labeled=3, folds_unlabeled=2)
    summary = prepare_la(la_unpacked, tmp_path / "la", split=split, allow_missing=True)
    splits = summary.splits
    assert len(splits.val) == 2 and not set(splits.val) & set(splits.unlabeled)
    training = set(splits.labeled) | set(splits.unlabeled)
    folds = [*splits.folds.labeled, *splits.folds.unlabeled]
    assert sorted(c for fold in folds for c in fold) == sorted(training)
    assert [len(f) for f in splits.folds.labeled] == [2, 2, 2]
    with pytest.raises(ConfigError, match="--test"):
        prepare_la(la_unpacked, tmp_path / "x", split=SplitOptions(test=2), allow_missing=True)
