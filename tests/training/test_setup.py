"""Which cases a run trains on: data.labeled and where the labeled cases past it go."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import CheckpointError, ConfigError, DataError
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.training import setup as run_setup
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressEvent
from tests.training.test_loop import tiny_config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=3, val=1, test=1, shape=(24, 24, 20))
    return out


def test_labeled_rest_joins_the_unlabeled_pool_in_list_order(synthetic: Path,
                                                            tmp_path: Path) -> None:
    dataset = PreparedDataset(synthetic)
    prepared = dataset.splits.resolve(None)
    splits = run_setup.resolve_splits(dataset, tiny_config(synthetic, tmp_path, data__labeled=1))
    assert splits["labeled"] == prepared["labeled"][:1]
    # BCP's LA at 4 labeled: unlabeled = cases 4..79 of train.list, i.e. labeled 5-8 first
    assert splits["unlabeled"] == prepared["labeled"][1:] + prepared["unlabeled"]
    assert len(splits["unlabeled"]) == 6
    assert splits["val"] == prepared["val"] and splits["test"] == prepared["test"]


def test_labeled_rest_drop_leaves_them_out(synthetic: Path, tmp_path: Path) -> None:
    dataset = PreparedDataset(synthetic)
    prepared = dataset.splits.resolve(None)
    config = tiny_config(synthetic, tmp_path, data__labeled=1, data__labeled_rest="drop")
    splits = run_setup.resolve_splits(dataset, config)
    assert splits["labeled"] == prepared["labeled"][:1]
    assert splits["unlabeled"] == prepared["unlabeled"]
    trained = set(run_setup.training_cases(splits, config))
    assert not trained & set(prepared["labeled"][1:])


def test_all_labeled_changes_nothing(synthetic: Path, tmp_path: Path) -> None:
    dataset = PreparedDataset(synthetic)
    prepared = dataset.splits.resolve(None)
    for labeled in (None, 4):
        splits = run_setup.resolve_splits(dataset,
                                          tiny_config(synthetic, tmp_path, data__labeled=labeled))
        assert splits["labeled"] == prepared["labeled"]
        assert splits["unlabeled"] == prepared["unlabeled"]


def test_more_labeled_than_prepared_is_refused(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only 4 labeled"):
        run_setup.resolve_splits(PreparedDataset(synthetic),
                                 tiny_config(synthetic, tmp_path, data__labeled=5))


def test_run_records_the_pool_it_drew_from(synthetic: Path, tmp_path: Path) -> None:
    built = run_setup.build_setup(tiny_config(synthetic, tmp_path / "run", data__labeled=2))
    info = built.run_info()
    assert (info["labeled"], info["unlabeled"]) == (2, 5)
    assert len(built.sampler.unlabeled_images) == 5


class _Interrupt(Exception):
    pass


def test_resume_on_a_reprepared_dataset_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare_synthetic(data, labeled=4, unlabeled=3, val=1, test=0, shape=(24, 24, 20))

    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(tiny_config(data, tmp_path / "run", data__labeled=2), progress=stop)
    shutil.rmtree(data)  # the same path, prepared again with one unlabeled case fewer
    prepare_synthetic(data, labeled=4, unlabeled=2, val=1, test=0, shape=(24, 24, 20))
    with pytest.raises(CheckpointError, match=r"prepared again since run .* started: its "
                                              r"splits and cases differ"):
        resume(tmp_path / "run")
    # a last.pt from before dataset identities: its case lists still catch the new split
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["dataset_identity"]
    torch.save(state, last)
    with pytest.raises(DataError, match="unlabeled patches from 5 cases, this dataset and "
                                        "config give 4"):
        resume(tmp_path / "run")
