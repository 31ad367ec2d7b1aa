"""scripts/run_progress.py on constructed logs: rates, planned totals and minutes left."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from tests.file_modules import load_file

rp = load_file("scripts/run_progress.py", "run_progress")


def _run(root: Path, arm: str, rows: list[dict], *, pretrain: int = 100, selftrain: int = 900,
         gz: bool = False, partial: bool = False) -> Path:
    run = root / arm / "all-s1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"framework:\n  name: bcp\n  pretrain_iterations: {pretrain}\n"
        f"  selftrain_iterations: {selftrain}\n", encoding="utf-8")
    text = "".join(json.dumps(r) + "\n" for r in rows) + ('{"phase": "self' if partial else "")
    if gz:
        with gzip.open(run / "metrics.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        (run / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run


def _steady(first: int, last: int, seconds_per_iter: float, start: float = 10.0) -> list[dict]:
    return [{"phase": "pretrain" if i <= 100 else "selftrain", "iter": i,
             "time": start + (i - first) * seconds_per_iter} for i in range(first, last + 1)]


def test_rate_total_and_minutes_left(tmp_path: Path) -> None:
    # 400 iterations at 0.1 s each, a validation row between (not a training row); a line cut
    # in the middle of writing at the end
    rows = _steady(1, 400, 0.1)
    rows.insert(200, {"phase": "val", "iter": 200, "split": "val", "dice": 0.5, "time": 30.0})
    run = _run(tmp_path, "sgd", rows, partial=True)
    p = rp.progress(run, run / "metrics.jsonl", window=20.0)
    assert (p.iteration, p.total) == (400, 1000)
    assert p.rate == pytest.approx(10.0)  # 200 iterations in the last 20 s
    assert p.minutes_left == pytest.approx(600 / 10.0 / 60)


def test_a_pause_inside_the_window_lowers_the_rate(tmp_path: Path) -> None:
    rows = _steady(101, 200, 0.1) + _steady(201, 300, 0.1, start=10.0 + 100 * 0.1 + 5.0)
    run = _run(tmp_path, "sgd-hco", rows, gz=True)
    p = rp.progress(run, run / "metrics.jsonl.gz", window=1000.0)
    # 199 iterations: 198 steps of 0.1 s and one of 5.1 s (the pause and its step)
    assert p.rate == pytest.approx(199 / (198 * 0.1 + 5.1))


def test_no_rows_yet_and_no_config(tmp_path: Path) -> None:
    run = _run(tmp_path, "sgd", [])
    (run / "config.yaml").unlink()
    p = rp.progress(run, run / "metrics.jsonl", window=60.0)
    assert (p.iteration, p.total, p.rate, p.minutes_left) == (0, None, None, None)
    assert rp.line("sgd/all-s1", p) == "sgd/all-s1 0/? - -"


def test_main_prints_each_run_and_the_latest_finish(tmp_path: Path, monkeypatch,
                                                    capsys) -> None:
    _run(tmp_path, "sgd", _steady(1, 500, 0.1))
    _run(tmp_path, "sgd-co", _steady(1, 250, 0.2))
    monkeypatch.setattr(sys, "argv", ["run_progress.py", str(tmp_path), "--window", "50"])
    rp.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sgd/all-s1 500/1000 10.0 it/s 0.8 min left"
    assert out[1] == "sgd-co/all-s1 250/1000 5.0 it/s 2.5 min left"
    assert out[2] == "latest run finishes in about 2.5 min at these rates"
