"""``hco train`` end to end on a tiny synthetic dataset, error paths included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.prepare import prepare_synthetic

DEMO = str(Path(__file__).resolve().parents[2] / "sample_configs" / "synthetic_demo.yaml")
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synthetic"
    prepare_synthetic(out, labeled=2, unlabeled=2, val=1, test=0, shape=(24, 24, 16))
    return out


def _train(*args: str):
    return runner.invoke(app, ["train", *args])


def test_demo_config_end_to_end(data, tmp_path):
    run = tmp_path / "run"
    result = _train("--config", DEMO, "--iterations", "3", "--data", str(data),
                    "--run-dir", str(run), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "training finished" in result.output and str(run.name) in result.output
    for name in ("config.yaml", "run.json", "metrics.jsonl", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/pretrain.pt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert info["finished"] is True and info["optimizer"] == "sgd-hco"
    assert info["iterations"] == {"pretrain": 1, "selftrain": 2}  # 3 x 40/200 -> 1

    again = _train("--config", DEMO, "--data", str(data), "--run-dir", str(run))
    assert again.exit_code == 1
    assert "is not empty; continue it with --resume" in again.output

    finished = _train("--resume", str(run))
    assert finished.exit_code == 1 and "already finished" in finished.output


def test_user_errors_are_one_line(data, tmp_path):
    bad = _train("--dataset", "synthetic", "--optimizer", "rmsprop", "--data", str(data))
    assert bad.exit_code == 1
    assert "unknown optimizer 'rmsprop'; choose one of: sgd, sgd-co, sgd-hco" in bad.output
    both = _train("--resume", str(tmp_path), "--seed", "3")
    assert both.exit_code == 1 and "give no other options" in both.output
    neither = _train()
    assert neither.exit_code == 1 and "exactly one of --config FILE or --dataset" in neither.output
    missing = _train("--dataset", "synthetic", "--data", str(tmp_path / "nothing"),
                     "--run-dir", str(tmp_path / "r"))
    assert missing.exit_code == 1 and "not a prepared dataset" in missing.output
    nothing = _train("--resume", str(tmp_path))
    assert nothing.exit_code == 1 and "no checkpoints/last.pt" in nothing.output
