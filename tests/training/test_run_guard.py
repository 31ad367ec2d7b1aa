"""Run folders across interruptions: edited configs on resume, stubs, Ctrl-C, moved runs."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from hco_cli.cli.common import handle_errors
from hco_cli.config import validate_config
from hco_cli.data.identity import dataset_identity
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import CheckpointError, ConfigError, Interrupted, Stopped
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.runs.folder import config_hash
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressEvent
from hco_cli.training.run_guard import config_changes, flatten, resume_config, run_session
from tests.cli.world import Stop, tiny_raw

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guard") / "syn"
    prepare_synthetic(out, labeled=2, unlabeled=1, val=1, test=1, classes=1, shape=(32, 32, 16))
    return out


def _stop_at(iteration: int, error: type[BaseException] = Stop) -> Any:
    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.iteration == iteration:
            raise error

    return stop


def _interrupted(data: Path, run: Path) -> Path:
    with contextlib.suppress(Stop):
        train(validate_config(tiny_raw(data, run)), progress=_stop_at(2))
    return run


def _edit(run: Path, **framework: Any) -> None:
    path = run / "config.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["framework"].update(framework)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def test_flatten_and_changes() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2],
                                                                 "d": None}
    assert config_changes({"a": {"b": 1}, "x": 2}, {"a": {"b": 2}, "y": 3}) == {
        "a.b": [1, 2], "x": [2, None], "y": [None, 3]}


def test_checkpoints_store_the_hash_of_their_config(data: Path, tmp_path: Path) -> None:
    run = _interrupted(data, tmp_path / "run")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["config_hash"] == config_hash(last["config"])


def test_an_edited_config_is_refused_then_applied_and_recorded(data: Path,
                                                               tmp_path: Path) -> None:
    run = _interrupted(data, tmp_path / "run")
    _edit(run, iterations=5)
    with pytest.raises(ConfigError, match=r"framework.iterations 3 -> 5\); restore it"):
        resume(run)
    result = resume(run, accept_config_changes=True)
    assert result.iterations == {"train": 5}  # the schedule was extended
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert info["config_changes"] == [
        {"iteration": 1, "changes": {"framework.iterations": [3, 5]}}]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["config"]["framework"]["iterations"] == 5 and last["global_iter"] == 5
    steps = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").open()
             if json.loads(line)["phase"] != "val"]
    assert steps == [1, 2, 3, 4, 5]


def test_keys_that_define_the_run_cannot_change(data: Path, tmp_path: Path) -> None:
    run = _interrupted(data, tmp_path / "run")
    path = run / "config.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["model"]["n_filters"] = 4
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"model\.n_filters cannot change within a run"):
        resume(run, accept_config_changes=True)


def test_a_stub_is_replaced_by_the_same_command(data: Path, tmp_path: Path) -> None:
    """A first iteration that fails leaves a run folder without last.pt; rerunning the same
    command replaces it (no --force), and --resume says there is nothing to resume."""
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(validate_config(tiny_raw(data, run)), progress=_stop_at(1))
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint"):
        resume(run)
    events: list[ProgressEvent] = []
    train(validate_config(tiny_raw(data, run)), progress=events.append)
    assert any("left nothing to resume" in (e.message or "") for e in events
               if e.kind == "warning")
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["finished"] is True


def test_ctrl_c_says_how_to_continue(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=f"hco train --resume {run}"):
        train(validate_config(tiny_raw(data, run)), progress=_stop_at(2, KeyboardInterrupt))
    early = tmp_path / "early"
    with pytest.raises(Interrupted, match="before the first checkpoint"):
        train(validate_config(tiny_raw(data, early)), progress=_stop_at(1, KeyboardInterrupt))


def test_a_moved_run_resumes_where_it_is(data: Path, tmp_path: Path) -> None:
    first = _interrupted(data, tmp_path / "first")
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    resume(moved)
    assert not first.exists()
    assert json.loads((moved / "run.json").read_text(encoding="utf-8"))["finished"] is True


def test_a_relative_dataset_path_is_kept_absolute_and_resumes_from_anywhere(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started from the dataset's parent with a relative data.path: the run stores it
    absolute, so --resume works from another folder."""
    monkeypatch.chdir(data.parent)
    run = tmp_path / "run"
    with contextlib.suppress(Stop):
        train(validate_config(tiny_raw(Path(data.name), run)), progress=_stop_at(2))
    stored = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]["path"]
    assert stored == str(data)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["data"]["path"] == stored
    monkeypatch.chdir(tmp_path)
    resume(run)
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["finished"] is True


def test_an_older_run_with_a_relative_path_says_where_to_resume_from(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run from before absolute paths (its config.yaml and last.pt hold data.path relative)
    resumed from another folder: one line saying the path is relative, not 'run hco prepare'."""
    run = _interrupted(data, tmp_path / "run")
    raw = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    raw["data"]["path"] = data.name
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["config"]["data"]["path"] = data.name
    torch.save(state, last)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=f"trained on {data.name}, a path relative to the "
                                              "folder it was started from"):
        resume(run)
    monkeypatch.chdir(data.parent)
    resume(run)
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["finished"] is True


def test_a_dataset_prepared_again_is_refused_on_resume(data: Path, tmp_path: Path) -> None:
    """A run records what it trains on; a resume on another preparation of the same folder
    says what changed, and resumes once the preparation it started with is back."""
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    run = _interrupted(copy, tmp_path / "run")
    recorded = dataset_identity(copy)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["dataset_identity"] == recorded
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))[
        "dataset_identity"] == recorded
    splits = copy / "splits.json"
    kept = splits.read_text(encoding="utf-8")
    raw = json.loads(kept)
    raw["val"], raw["test"] = raw["test"], raw["val"]  # prepared again with another split
    splits.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(CheckpointError, match=rf"{copy} was prepared again since run {run} "
                       r"started: its splits differ .* start a new run$"):
        resume(run)
    splits.write_text(kept, encoding="utf-8")
    assert resume(run).finished
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["dataset_identity"] == recorded


def test_a_run_from_before_identities_resumes_unchecked(data: Path, tmp_path: Path) -> None:
    run = _interrupted(data, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["dataset_identity"]
    torch.save(state, last)
    assert resume(run).finished


def test_interrupted_is_one_line_with_exit_code_130() -> None:
    demo = typer.Typer()

    @demo.command()
    @handle_errors
    def work() -> None:
        raise Interrupted("interrupted; continue from the last checkpoint with: hco train "
                          "--resume runs/x")

    result = runner.invoke(demo, [])
    assert result.exit_code == 130
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: interrupted; continue from the last checkpoint with: hco train "
                     "--resume runs/x"]


def test_a_run_stopped_by_sigterm_exits_143_through_the_run_session(tmp_path: Path) -> None:
    """The signal that stopped a run reaches the exit code through run_session's message
    (128 + 15, as a shell reports a process SIGTERM ended); a bare KeyboardInterrupt stays 130."""
    demo = typer.Typer()

    @demo.command()
    @handle_errors
    def work(term: bool = False) -> None:
        with run_session(tmp_path / "run"):
            raise Stopped(signum=signal.SIGTERM) if term else KeyboardInterrupt

    assert runner.invoke(demo, ["--term"]).exit_code == 143
    result = runner.invoke(demo, [])
    assert result.exit_code == 130 and "nothing to resume" in result.stderr


@pytest.mark.parametrize(("edit", "iteration", "refused"), [
    ({"framework": {"pretrain_iterations": 8}}, 2, None),  # still pre-training: extendable
    ({"framework": {"pretrain_iterations": 8}}, 5, "framework.pretrain_iterations"),
    ({"framework": {"selftrain_iterations": 12}}, 5, None),
    ({"data": {"patch_size": [24, 24, 8]}}, 2, "data.patch_size"),
    ({"data": {"augment": "flip"}}, 2, "data.augment"),
])
def test_a_finished_pretraining_and_the_data_streams_cannot_change(
    data: Path, tmp_path: Path, edit: dict[str, Any], iteration: int, refused: str | None
) -> None:
    """BCP with 4 pre-training iterations: lengthening them once they are over would leave
    the trained iterations short of them and shift the self-training's iteration axis; a
    new patch or augmentation changes the data stream. Refused even with --accept."""
    run = tmp_path / "run"
    raw = tiny_raw(data, run)
    raw["framework"] = {"name": "bcp", "pretrain_iterations": 4, "selftrain_iterations": 8}
    saved = validate_config(raw).model_dump(mode="json")
    edited = json.loads(json.dumps(saved))
    for section, values in edit.items():
        edited[section].update(values)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(edited), encoding="utf-8")
    if refused is None:
        _, changes = resume_config(run, saved, accept=True, iteration=iteration)
        assert list(changes) == [f"{s}.{k}" for s, v in edit.items() for k in v]
        return
    with pytest.raises(CheckpointError, match=rf"{re.escape(refused)} cannot change within a "
                                              "run"):
        resume_config(run, saved, accept=True, iteration=iteration)
