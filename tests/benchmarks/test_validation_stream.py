"""benchmarks/validation_stream.py on the CPU: the window counts are the analytic ones, both
paths give every case the same map (fp32, up to rounding), and bad arguments are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_benchmark

vs = load_benchmark("validation_stream")


def test_the_la_test_split_computes_a_tenth_fewer_windows_streamed() -> None:
    shapes = [tuple(s) for s in vs.LA_TEST_SHAPES]
    # e.g. (232, 144, 88): ceil(120/18)+1=8 x ceil(32/18)+1=3 x ceil(8/4)+1=3 = 72 windows
    assert vs.windows_of((232, 144, 88), (112, 112, 80), (18, 18, 4)) == 72
    assert vs.computed(shapes, (112, 112, 80), (18, 18, 4), 16) == {
        "needed": 1128, "case": 1248, "stream": 1136}


def test_paths_agree_and_the_figures_are_written(tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    vs.main(["--device", "cpu", "--mode", "eager", "--shapes", "20,18,16;9,20,16;16,16,16",
             "--patch", "16,16,16", "--stride", "4,4,4", "--batch", "3", "--filters", "4",
             "--rounds", "1", "--warmup", "0", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    # 2x2x1 + 1x2x1 + 1x1x1 windows = 7 (the second volume padded to 16 in x); in batches of
    # 3 that is 6 + 3 + 3 computed case by case and 9 streamed
    assert result["windows"] == {"needed": 7, "case": 12, "stream": 9}
    assert result["cases"] == 3 and result["bf16"] is False
    assert max(result["max_abs_difference"]) < 1e-5
    assert result["ratio_stream"] == pytest.approx(
        result["seconds"]["case"] / result["seconds"]["stream"])


@pytest.mark.parametrize("args", [["--shapes", "20,18"], ["--patch", "16,0,8"],
                                  ["--batch", "0"], ["--stride", "a,b,c"]])
def test_bad_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit):
        vs.main(["--device", "cpu", "--mode", "eager", *args])
