"""benchmarks/window_forward.py on the CPU: every arm computes the same probabilities (fp32,
eager; layouts and batch sizes change no value beyond rounding), ratios are the medians', and
malformed arms are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_benchmark

wf = load_benchmark("window_forward")


def test_arms_agree_and_the_figures_are_written(tmp_path: Path) -> None:
    out = tmp_path / "wf.json"
    wf.main(["--device", "cpu", "--arms", "eager-b2-cl,eager-b4-contiguous,eager-b1-cl",
             "--patch", "32,32,16", "--filters", "4", "--windows", "4", "--rounds", "1",
             "--warmup", "1", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert list(result["ms_per_window"]) == ["eager-b2-cl", "eager-b4-contiguous", "eager-b1-cl"]
    assert result["ratio_to_first"]["eager-b2-cl"] == 1.0
    first = result["ms_per_window"]["eager-b2-cl"]
    for name, ms in result["ms_per_window"].items():
        assert result["ratio_to_first"][name] == pytest.approx(first / ms)
    # softmax probabilities of one network on the same windows: equal to fp32 rounding
    assert max(result["max_abs_difference_to_first"].values()) < 1e-5
    assert result["bf16"] is False and result["deterministic"] is False


@pytest.mark.parametrize("arm", ["fast-b16-cl", "ro-16-cl", "ro-b0-cl", "ro-b16-nhwc", "ro-b16"])
def test_malformed_arms_are_refused(arm: str) -> None:
    with pytest.raises(SystemExit):
        wf.main(["--device", "cpu", "--arms", arm])


def test_windows_must_fill_every_batch() -> None:
    with pytest.raises(SystemExit):
        wf.main(["--device", "cpu", "--arms", "eager-b3-cl", "--windows", "4"])
