"""benchmarks/first_conv.py on the CPU: the padded convolution is the convolution (output and
weight gradient against float64), and the benchmark writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_benchmark

fc = load_benchmark("first_conv")


def test_padding_the_input_channel_changes_nothing_in_fp32(tmp_path: Path) -> None:
    out = tmp_path / "fc.json"
    fc.main(["--device", "cpu", "--shape", "2", "1", "12", "10", "8", "--rounds", "1",
             "--repeat", "1", "--warmup", "1", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    diff = result["max_abs_difference"]
    assert diff["plain_vs_float64"] < 1e-5 and diff["padded_vs_float64"] < 1e-5
    assert diff["wgrad_plain_vs_float64"] < 1e-3 and diff["wgrad_padded_vs_float64"] < 1e-3
    assert diff["padded_vs_plain"] < 1e-5
    assert set(result["median_ms"]) == {"plain-fwd", "plain-fwd+wgrad", "padded-fwd",
                                        "padded-fwd+wgrad"}
    assert result["ratio_plain_over_padded"]["fwd"] == pytest.approx(
        result["median_ms"]["plain-fwd"] / result["median_ms"]["padded-fwd"])


def test_more_than_one_input_channel_is_refused() -> None:
    with pytest.raises(SystemExit):
        fc.main(["--device", "cpu", "--shape", "2", "3", "8", "8", "8"])
