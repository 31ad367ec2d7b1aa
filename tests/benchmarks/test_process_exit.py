"""benchmarks/process_exit.py: each ending ends a fresh process that loaded torch, and the
figures are the medians of what was measured."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_benchmark

pe = load_benchmark("process_exit")


@pytest.mark.slow
def test_every_ending_ends_the_process_and_the_medians_are_written(tmp_path: Path) -> None:
    out = tmp_path / "exit.json"
    pe.main(["--runs", "1", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result["median"]) == {"interpreter", "gc-freeze", "hco"}
    for name, values in result["seconds"].items():
        assert len(values) == 1 and 0 < values[0] < 60
        assert result["median"][name] == statistics.median(values)
    assert result["ratio_to_interpreter"]["interpreter"] == 1.0


def test_runs_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        pe.main(["--runs", "0"])
