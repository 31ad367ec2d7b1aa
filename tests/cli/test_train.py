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


@pytest.mark.parametrize(("patch", "message"), [
    ("32,32,8", "error: data.patch_size [32, 32, 8]: z = 8 is not a multiple of 16 (the V-Net "
                "halves each axis 4 times); use 16, for example"),
    ("64,32,16", "error: data.patch_size [64, 32, 16]: x = 64 is larger than the largest "
                 "training case of"),
])
def test_patch_sizes_the_model_or_data_cannot_take_fail_before_the_run_folder(
    data, tmp_path, patch, message
):
    config = tmp_path / "bad.yaml"
    text = Path(DEMO).read_text(encoding="utf-8")
    sizes = ", ".join(patch.split(","))
    config.write_text(text.replace("patch_size: [32, 32, 16]", f"patch_size: [{sizes}]"),
                      encoding="utf-8")
    run = tmp_path / "run"
    result = _train("--config", str(config), "--data", str(data), "--run-dir", str(run),
                    "--device", "cpu")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(message) and "Traceback" not in result.output
    assert not run.exists()
