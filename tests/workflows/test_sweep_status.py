"""A running run's progress in ``hco sweep --status``: planned totals, rates, minutes left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hco_cli.cli.sweep_tables import progress_text, status_counts
from hco_cli.ssl.config import BCPConfig, CMTConfig, MeanTeacherConfig, SupervisedConfig
from hco_cli.workflows.sweep_status import (
    Progress,
    planned_iterations,
    record_state,
    record_submission,
    run_progress,
    sweep_status,
)


@pytest.mark.parametrize(("framework", "total"), [
    (BCPConfig(), 2000 + 15000),
    (BCPConfig(pretrain_iterations=0, selftrain_iterations=7500), 7500),
    (CMTConfig(), 200 * 20),
    (CMTConfig(epochs=60, iterations_per_epoch=39), 60 * 39),
    (MeanTeacherConfig(iterations=123), 123),
    (SupervisedConfig(), 30000),
])
def test_planned_iterations_of_every_framework(framework, total) -> None:
    # from the config as a sweep's plan dumps it (every field written out)
    assert planned_iterations(framework.model_dump(mode="json")) == total
    assert planned_iterations({"name": "bcp"}) is None


def _steps(first: int, last: int, seconds: float, start: float = 10.0,
           phase: str = "selftrain") -> list[dict]:
    return [{"phase": phase, "iter": i, "epoch": 1, "time": start + (i - first) * seconds}
            for i in range(first, last + 1)]


def _write(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def test_rate_total_and_minutes_left(tmp_path: Path) -> None:
    # 400 steps of 0.1 s, a validation record among them, a line being written at the end
    rows = _steps(1, 400, 0.1)
    rows.insert(200, {"phase": "val", "train_phase": "selftrain", "iter": 200, "split": "val",
                      "dice": 0.5, "time": 30.0})
    metrics = _write(tmp_path / "metrics.jsonl", rows, tail='{"phase": "selftr')
    p = run_progress(metrics, 1000, window=20.0)
    assert p is not None and (p.iteration, p.total) == (400, 1000)
    assert p.rate == pytest.approx(10.0)  # 200 iterations in the last 20 s
    assert p.minutes_left == pytest.approx(600 / 10.0 / 60)


def test_a_pause_inside_the_window_lowers_the_rate(tmp_path: Path) -> None:
    rows = _steps(101, 200, 0.1) + _steps(201, 300, 0.1, start=10.0 + 100 * 0.1 + 5.0)
    p = run_progress(_write(tmp_path / "metrics.jsonl", rows), None, window=1000.0)
    assert p is not None
    # 199 iterations: 198 steps of 0.1 s and one of 5.1 s (the pause and its step)
    assert p.rate == pytest.approx(199 / (198 * 0.1 + 5.1))
    assert p.minutes_left is None  # no planned total


def test_only_the_tail_is_read(tmp_path: Path) -> None:
    # steps of 1 s, then of 0.01 s: a tail that holds only fast steps gives the fast rate,
    # and the line the tail cuts in two is skipped
    rows = _steps(1, 1000, 1.0) + _steps(1001, 1300, 0.01, start=1010.0)
    metrics = _write(tmp_path / "metrics.jsonl", rows)
    line = len(json.dumps(rows[-1])) + 1
    p = run_progress(metrics, 2000, window=1e9, max_bytes=100 * line + 7)
    assert p is not None and p.iteration == 1300
    assert p.rate == pytest.approx(100.0)


def test_no_record_yet(tmp_path: Path) -> None:
    assert run_progress(tmp_path / "missing.jsonl", 10) is None
    assert run_progress(_write(tmp_path / "m.jsonl", [], tail="{"), 10) is None


def test_a_running_run_of_a_sweep_shows_its_progress(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    for arm, rows in (("sgd", _steps(2001, 2600, 0.05)), ("sgd-hco", [])):
        (out / "_configs" / arm).mkdir(parents=True)
        (out / "_configs" / arm / "all-s1.yaml").write_text(
            "framework:\n  name: bcp\n  pretrain_iterations: 2000\n"
            "  selftrain_iterations: 7500\n", encoding="utf-8")
        record_submission(out, arm, "all-s1", executor="local", job_id=arm)
        record_state(out, arm, "all-s1", job_id=arm, state="running")
        _write(out / arm / "all-s1" / "metrics.jsonl", rows)
    sgd, hco = sweep_status(out)
    assert sgd.state == "running" and sgd.progress == Progress(2600, 9500, pytest.approx(20.0))
    # a run resumed with a longer schedule: its own config.yaml counts over the plan's
    (out / "sgd" / "all-s1" / "config.yaml").write_text(
        "framework:\n  name: bcp\n  pretrain_iterations: 2000\n  selftrain_iterations: "
        "15000\n", encoding="utf-8")
    assert sweep_status(out)[0].progress == Progress(2600, 17000, pytest.approx(20.0))
    (out / "sgd" / "all-s1" / "config.yaml").unlink()
    sgd = sweep_status(out)[0]
    assert hco.state == "running" and hco.progress is None
    assert progress_text(sgd.progress) == "2600/9500, 20.0 it/s, 5.8 min left"
    assert progress_text(hco.progress) == "-"
    assert progress_text(Progress(5)) == "5/?"
    assert progress_text(Progress(9, 10, 0.0125)) == "9/10, 0.013 it/s, 1.3 min left"
    assert status_counts([sgd, hco]) == (
        "2 running; the running runs end in about 5.8 min at their recent rates")
