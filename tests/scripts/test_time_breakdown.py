"""scripts/time_breakdown.py on a constructed log: every second of the wall time is placed."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from tests.file_modules import load_file

tb = load_file("scripts/time_breakdown.py", "time_breakdown")


def _log() -> list[dict]:
    """Pre-training: 10 steps of 0.02 s from t = 2, a validation of 0.5 s after iteration 5
    (0.375 s of it scoring the test split), one more at no cost after iteration 10.
    Self-training: 10 steps of 0.05 s, a 1 s pause after iteration 14, iterations 17-18 not
    logged (one gap of three steps)."""
    rows, t = [], 2.0
    for it in range(1, 11):
        rows.append({"phase": "pretrain", "iter": it, "time": round(t, 6)})
        if it == 5:
            t += 0.5
            rows.append({"phase": "pretrain", "iter": it, "split": "val", "dice": 0.5,
                         "score": 0.5, "time": round(t, 6),
                         "seconds": {"val": 0.125, "test": 0.375}})
        if it == 10:  # after the phase's last iteration: in no gap, its seconds in no share
            rows.append({"phase": "pretrain", "iter": it, "split": "val", "dice": 0.5,
                         "score": 0.5, "time": round(t, 6), "seconds": {"test": 9.0}})
        t += 0.02
    t += 0.05 - 0.02  # the first self-training step follows the last pre-training one
    for it in range(11, 21):
        if it in (17, 18):
            t += 0.05
            continue
        rows.append({"phase": "selftrain", "iter": it, "time": round(t, 6)})
        t += 0.05 + (1.0 if it == 14 else 0.0)
    return rows


def test_every_second_is_placed() -> None:
    rows = _log()
    last = rows[-1]["time"]
    b = tb.breakdown(rows, wall=last + 0.25)
    pre, self_ = b.phases["pretrain"], b.phases["selftrain"]
    assert b.start == pytest.approx(2.0) and b.tail == pytest.approx(0.25)
    assert pre.iterations == 10 and pre.median_ms == pytest.approx(20.0)
    assert pre.validation == pytest.approx(0.5) and pre.validations == 1
    assert pre.scoring == {"test": 0.375} and self_.scoring == {}
    assert pre.steps == pytest.approx(9 * 0.02) and pre.pauses == pytest.approx(0.0)
    assert self_.iterations == 10 and self_.median_ms == pytest.approx(50.0)
    assert self_.pauses == pytest.approx(1.0) and self_.pause_count == 1
    assert self_.steps == pytest.approx(9 * 0.05)
    # The step between the phases belongs to neither; the rest adds up to the wall time.
    placed = b.start + b.tail + sum(p.steps + p.validation + p.pauses for p in b.phases.values())
    assert placed + 0.05 == pytest.approx(last + 0.25)


def test_the_script_reads_a_gzipped_log(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(json.dumps(r) + "\n" for r in _log())
    (tmp_path / "metrics.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "run.json").write_text(json.dumps({"wall_seconds": _log()[-1]["time"] + 0.25}))
    monkeypatch.setattr(sys, "argv", ["time_breakdown.py", str(tmp_path)])
    tb.main()
    out = capsys.readouterr().out
    assert "pretrain      10 its, median   20.0 ms" in out
    assert "validation     0.5 s (1 records, of which test 0.4 s)" in out
    assert "pauses    1.0 s (1)" in out
    assert "end (after the last record)             0.2 s" in out
    monkeypatch.setattr(sys, "argv", ["time_breakdown.py", str(tmp_path / "absent")])
    with pytest.raises(SystemExit, match=r"no metrics\.jsonl"):
        tb.main()
