"""benchmarks/components.py on the CPU: both arms give the scipy masks of a blob batch, and
the script prints and writes the ratio of one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.benchmarks.scripts import load_benchmark

bench = load_benchmark("components")


def test_both_arms_keep_scipys_largest_component_per_volume() -> None:
    labels, count = bench.batch_labels(torch.device("cpu"), seed=1)
    structure = ndimage.generate_binary_structure(3, 3)
    for arm in (bench.before, bench.largest_of_labels):
        got = arm(labels, count).numpy()
        for volume, result in zip(labels.numpy() > 0, got, strict=True):
            single, n = ndimage.label(volume, structure=structure)
            want = single == np.argmax(np.bincount(single.ravel())[1:]) + 1
            np.testing.assert_array_equal(result, want)
            assert n > 1  # several components per volume: the choice is not trivial


def test_one_run_prints_and_writes_the_ratio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "components.json"
    monkeypatch.setattr(sys, "argv", ["components.py", "--device", "cpu", "--rounds", "1",
                                      "--repeat", "1", "--json", str(out)])
    bench.main()
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert "ratio before / foreground" in printed
    assert result["ratio"] == pytest.approx(
        result["median_ms"]["before"] / result["median_ms"]["foreground"])
    assert 0.05 < result["foreground"] < 0.15 and result["components"] > 4
