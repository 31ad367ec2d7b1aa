"""benchmarks/predict_cold.py: one fresh child process times every stage of a cold
``hco predict`` on a tiny synthetic dataset (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("import", "cuda_init", "load", "forward_first", "forward_again", "lcc_first",
          "lcc_again", "predict_first", "predict_again")


@pytest.mark.slow
def test_cold_stages_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cold.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict_cold.py"),
                           "--synthetic", "--cases", "2", "--device", "cpu", "--no-cli",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["cases"] == 2 and result["device"] == "cpu" and result["cli_s"] is None
    seconds = result["seconds"]
    assert set(seconds) == set(STAGES)
    assert all(seconds[s] > 0 for s in STAGES if s != "cuda_init")
    # The child imports torch itself: a fresh process, not this one's warm modules.
    assert seconds["import"] > 0.2
    for stage in STAGES:
        assert stage in done.stdout
    assert "before predict" in done.stdout


def test_top_level_imports_sum_the_unindented_cumulative_column() -> None:
    predict_cold = load_benchmark("predict_cold")
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       120 |        120 |   _io",
        "import time:      1000 |     500000 | torch",
        "import time:        50 |      20000 |     torch.nn",
        "import time:        10 |     250000 | hco_cli.cli.app",
        "a warning line",
    ])
    assert predict_cold.top_level_imports(stderr) == 0.75


@pytest.mark.slow
def test_bytecode_arms_read_from_their_own_prefixes(tmp_path: Path) -> None:
    """The 'with' arm's prefix holds torch's compiled bytecode (written by the untimed first
    process), the 'without' arm's stays empty, and every process is timed."""
    predict_cold = load_benchmark("predict_cold")
    run, data = predict_cold.fixture(tmp_path / "fixture", 1)
    result = predict_cold.bytecode(run, data, tmp_path, "cpu", 1)
    assert len(result["with"]) == len(result["without"]) == 1
    assert result["ratio"] == result["median_without"] / result["median_with"]
    assert set(result["environment"]) == {"writes_bytecode", "torch_bytecode_cached"}
    filled = list((tmp_path / "pyc-with").rglob("torch/__init__.*.pyc"))
    assert len(filled) == 1
    assert list((tmp_path / "pyc-with").rglob("hco_cli/cli/predict.*.pyc"))
    assert not any((tmp_path / "pyc-without").iterdir())
