"""``hco plan`` and ``hco train --plan auto`` end to end on a synthetic thick-slice dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.plan import read_plan
from tests.planning import anisotropic

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan-cli")
    anisotropic.prepare(anisotropic.write_scans(root / "raw", cases=6), root / "data", test=1)
    return root / "data"


def test_plan_prints_and_writes(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    dry = runner.invoke(app, ["plan", str(copy), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "patch size" in dry.output and "x 12" in dry.output
    assert "3 x 3 x 1" in dry.output and "2 x 2 x 1" in dry.output
    assert read_plan(copy).network is None
    result = runner.invoke(app, ["plan", str(copy), "--framework", "cmt"])
    assert result.exit_code == 0, result.output
    network = read_plan(copy).network
    assert network is not None and network.framework == "cmt"
    assert "wrote" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["plan", "{missing}"], "is not a prepared dataset"),
    (["plan", "{data}", "--preset", "lung"], "--preset 'lung': choose auto, none or one of"),
    (["plan", "{data}", "--gpu-memory", "0.01"], "no patch fits the memory target"),
    (["plan", "{data}", "--labeled-batch", "3"], "bcp pairs batch halves"),
    (["train", "--config", "auto"], "--config auto needs --data DIR"),
    (["train", "--dataset", "synthetic", "--data", "{missing}", "--plan", "auto"],
     "is not a prepared dataset"),
    (["train", "--dataset", "synthetic", "--data", "{data}", "--plan", "best"],
     "--plan 'best': the only plan is 'auto'"),
])
def test_bad_input_is_one_red_line(data: Path, tmp_path: Path, args: list[str],
                                   message: str) -> None:
    args = [a.format(data=data, missing=tmp_path / "none") for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_train_with_plan_auto_uses_the_planned_layout(data: Path, tmp_path: Path) -> None:
    config = {
        "data": {"path": str(data), "augment": "flip"},
        "model": {"name": "vnet", "n_filters": 4},
        "framework": {"name": "bcp", "pretrain_iterations": 1, "selftrain_iterations": 1},
        "optimizer": {"name": "sgd-hco"},
        "validation": {"every": 1, "stride": [32, 32, 6]},
        "plan": "auto", "seed": 0,
    }
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(path), "--run-dir", str(run),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["patch_size"] == [64, 64, 12]
    assert saved["model"]["strides"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    assert saved["model"]["kernels"][0] == [3, 3, 1]
    # Two labeled cases: the planned batches are 2 + 2 (a batch draws distinct cases).
    assert (saved["data"]["labeled_batch_size"], saved["data"]["unlabeled_batch_size"]) == (2, 2)
    assert saved["plan"] == "auto"
