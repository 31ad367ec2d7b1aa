"""Typed run files (run.json, last.pt metadata) and the run folder's paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hco_cli.errors import CheckpointError
from hco_cli.runs.files import BestScore, ResumeMeta, RunInfo
from hco_cli.runs.folder import RUN_INFO_KEYS, read_run_info, write_run_info
from hco_cli.runs.layout import RunFolder

INFO = RunInfo(dataset="la", framework="bcp", optimizer="sgd-hco", seed=1, fold=None, labeled=8,
               unlabeled=72, iterations={"pretrain": 20, "selftrain": 80}, device="cpu",
               processes=1, select_on="val", init_from=None, warnings=[], finished=False,
               wall_seconds=1.5, hco_version="0.0", best=BestScore(score=0.5, iter=20))


def test_run_json_round_trip_and_required_keys(tmp_path: Path) -> None:
    write_run_info(tmp_path, INFO)
    data = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert "config_changes" not in data and set(RUN_INFO_KEYS) == set(data)
    assert data["fold"] is None and data["best"] == {"score": 0.5, "iter": 20}
    assert read_run_info(tmp_path) == INFO
    changed = INFO.model_copy(update={"config_changes": [{"iteration": 3, "changes": {}}]})
    write_run_info(tmp_path, changed)
    assert read_run_info(tmp_path).config_changes == [{"iteration": 3, "changes": {}}]


def test_run_json_errors_name_the_file_and_field(tmp_path: Path) -> None:
    data = {**INFO.to_json(), "seed": "one"}
    (tmp_path / "run.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"run.json: seed: Input should be a valid integer"):
        read_run_info(tmp_path)


def test_resume_metadata_is_validated_beside_the_tensors() -> None:
    meta = ResumeMeta(phase_index=1, local_iter=5, global_iter=25, lr=0.01, elapsed=3.0,
                      finished=False, processes=2, run_best=BestScore())
    state = {**meta.payload(), "model": {}, "optimizers": {}}
    assert ResumeMeta.of(state, source="last.pt") == meta
    assert ResumeMeta.of({k: v for k, v in state.items() if k != "processes"},
                         source="x").processes == 1  # written before processes were recorded
    with pytest.raises(CheckpointError, match=r"last\.pt: local_iter: Input should be greater"):
        ResumeMeta.of({**state, "local_iter": -1}, source="last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: global_iter: Field required"):
        ResumeMeta.of({k: v for k, v in state.items() if k != "global_iter"}, source="last.pt")


def test_run_folder_builds_every_path_once(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r")
    assert run.checkpoint("last") == tmp_path / "r" / "checkpoints" / "last.pt"
    summary = run.summary("best")
    assert summary == tmp_path / "r" / "eval" / "best" / "summary.json"
    assert RunFolder.of_summary(summary) == run
    assert RunFolder.of_summary(tmp_path / "summary.json") is None
    summary.parent.mkdir(parents=True)
    summary.write_text("{}", encoding="utf-8")
    assert run.summaries() == {"best": summary}
