"""benchmarks/concurrency.py: its figures on constructed train_step JSON, a failing process,
and one tiny run of K = 1, 2 train_step processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks.scripts import ROOT, load_benchmark

cc = load_benchmark("concurrency")


def child(ms: float, start: float, end: float, busy_until: float | None = None) -> Any:
    return cc.Child(ms=ms, rounds_ms=[ms], start=start, end=end,
                    busy_until=end if busy_until is None else busy_until, device="d", torch="t")


def train_step_json(ms: float, start: float, end: float, busy_until: float) -> dict[str, Any]:
    """The shape benchmarks/train_step.py --json writes (with its --barrier windows)."""
    return {"device": "NVIDIA H200", "torch": "2.11.0", "data": None, "iterations": 20,
            "rounds": 2, "rows": [
                {"phase": "selftrain", "optimizer": "sgd-hco", "ms": 99.0, "ratio": 1.0,
                 "stages_ms": {}, "rounds_ms": [98.0, 100.0]},
                {"phase": "selftrain", "optimizer": "sgd", "ms": ms, "ratio": 1.0,
                 "stages_ms": {}, "rounds_ms": [ms - 1, ms + 1]},
                {"phase": "pretrain", "optimizer": "sgd", "ms": 17.0, "ratio": 1.0,
                 "stages_ms": {}, "rounds_ms": [17.0, 17.0]}],
            "windows": {"selftrain": {"start": start, "end": end, "busy_until": busy_until},
                        "pretrain": {"start": 0.0, "end": 1.0, "busy_until": 1.0}}}


def test_processes_always_start_with_the_baseline() -> None:
    assert cc.parse_processes("1,2,4") == [1, 2, 4]
    assert cc.parse_processes("4,2") == [1, 2, 4]
    assert cc.parse_processes("8,4,8,") == [1, 4, 8]
    for bad in ("0,2", "two", ""):
        with pytest.raises(cc.BenchmarkError):
            cc.parse_processes(bad)


def test_reads_the_row_and_window_of_its_phase_and_optimizer() -> None:
    got = cc.read_child(train_step_json(50.0, 10.0, 20.0, 21.0), "selftrain", "sgd")
    assert got == cc.Child(ms=50.0, rounds_ms=[49.0, 51.0], start=10.0, end=20.0,
                           busy_until=21.0, device="NVIDIA H200", torch="2.11.0")
    old = train_step_json(50.0, 10.0, 20.0, 21.0)
    del old["windows"]["selftrain"]["busy_until"]
    assert cc.read_child(old, "selftrain", "sgd").busy_until == 20.0
    with pytest.raises(cc.BenchmarkError, match="compile-ro"):
        cc.read_child(old, "selftrain", "sgd+compile-ro")
    del old["windows"]
    with pytest.raises(cc.BenchmarkError):
        cc.read_child(old, "selftrain", "sgd")


def test_aggregate_throughput_and_ratio_to_one_process() -> None:
    one = cc.summarise(1, [child(40.0, 0.0, 4.0)], None)
    assert one["aggregate_it_s"] == pytest.approx(25.0)
    assert one["ratio"] == 1.0 and one["slower"] == 1.0 and one["overlap_full"]
    two = cc.summarise(2, [child(50.0, 0.0, 10.0, 12.0), child(100.0, 0.0, 10.0, 12.0)], one)
    assert two["aggregate_it_s"] == pytest.approx(1000 / 50 + 1000 / 100)  # 30 it/s
    assert two["ratio"] == pytest.approx(30.0 / 25.0)
    assert two["mean_ms"] == pytest.approx(75.0)
    assert two["slower"] == pytest.approx(75.0 / 40.0)
    assert two["ms"] == [50.0, 100.0]
    # four processes each at K times the single time: the GPU was saturated by one
    four = cc.summarise(4, [child(160.0, 0.0, 10.0)] * 4, one)
    assert four["ratio"] == pytest.approx(1.0)


def test_overlap_of_the_timed_windows() -> None:
    # started together; the first kept training (untimed) until the second had finished
    together = [child(1.0, 100.0, 110.0, 112.0), child(1.0, 100.0, 111.5, 111.6)]
    assert cc.coverage(together) == [1.0, 1.0]
    # a start 50 ms late: 0.5 % of the first window ran without the second process
    late = [child(1.0, 0.0, 10.0, 12.0), child(1.0, 0.05, 10.05, 12.0)]
    assert cc.coverage(late) == pytest.approx([0.995, 1.0])
    assert cc.summarise(2, late, None)["overlap_full"]
    # one after the other half-way: half of each window ran alone
    staggered = [child(1.0, 0.0, 10.0), child(1.0, 5.0, 15.0)]
    assert cc.coverage(staggered) == pytest.approx([0.5, 0.5])
    # no overlap at all
    assert cc.coverage([child(1.0, 0.0, 1.0), child(1.0, 2.0, 3.0)]) == [0.0, 0.0]
    one = cc.summarise(1, [child(10.0, 0.0, 1.0)], None)
    run = cc.summarise(2, staggered, one)
    assert not run["overlap_full"]
    printed = cc.table("sgd", [one, run])
    assert "PARTIAL (min 50% of a window): not a concurrency measurement" in printed
    assert printed.splitlines()[2].endswith("full")


def test_a_failing_process_ends_the_run_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "train_step.py"
    fake.write_text("import sys\nfor i in range(30):\n    print(f'line {i}', file=sys.stderr)\n"
                    "sys.exit(3)\n", encoding="utf-8")
    monkeypatch.setattr(cc, "TRAIN_STEP", fake)
    monkeypatch.setattr(sys, "argv", ["concurrency.py", "--processes", "1", "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        cc.main()
    assert exit_info.value.code == "concurrency: process 1 of K=1 (sgd) failed (exit status 3)"
    err = capsys.readouterr().err
    assert "line 29" in err and "line 10" in err and "line 9\n" not in err  # the last 20
    assert "Traceback" not in err


@pytest.mark.slow
def test_two_cpu_processes_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "concurrency.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "concurrency.py"), "--device", "cpu",
         "--processes", "2", "--patch", "16,16,16", "--iterations", "1", "--rounds", "2",
         "--warmup", "1", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["device"] == "cpu" and result["processes"] == [1, 2]
    runs = result["results"][0]["runs"]
    assert [r["processes"] for r in runs] == [1, 2]
    assert [len(r["children"]) for r in runs] == [1, 2]
    for run in runs:
        assert run["overlap_full"], run["coverage"]
        assert run["aggregate_it_s"] == pytest.approx(sum(1000 / ms for ms in run["ms"]))
        assert run["ratio"] == pytest.approx(run["aggregate_it_s"] / runs[0]["aggregate_it_s"])
        for c in run["children"]:
            assert len(c["rounds_ms"]) == 2
            assert c["window"]["start"] < c["window"]["end"] <= c["window"]["busy_until"]
    starts = [c["window"]["start"] for c in runs[1]["children"]]
    assert max(starts) - min(starts) < 0.5  # released together by the barrier
    assert "sgd:" in done.stdout and "vs K=1" in done.stdout
