"""``hco sweep`` end to end through the real app: run, rerun, dry run, failures, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hco_cli.cli.app import app
from tests.workflows.test_sweep import tiny_dataset, write_tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-sweep")
    return write_tiny_config(tiny_dataset(root), root / "tiny.yaml")


def sweep(*args: str | Path):
    return runner.invoke(app, ["sweep", *map(str, args)], env={"COLUMNS": "400"})


def test_sweep_runs_then_skips_and_plans(config, tmp_path):
    out = tmp_path / "sw"
    dry = sweep("--config", config, "--optimizers", "sgd,sgd-hco", "--seeds", "5",
                "--out", out, "--share-pretraining", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count(" new ") == 3 and str(out / "sgd" / "all-s5") in dry.output
    assert not out.exists()  # a dry run trains nothing
    assert "runs per GPU: 1 (auto: training on the CPU)" in dry.output
    result = sweep("--config", config, "--optimizers", "sgd,sgd-hco", "--seeds", "5",
                   "--out", out, "--share-pretraining")
    assert result.exit_code == 0, result.output
    assert result.output.count("trained") == 3
    assert f"hco compare 'sgd={out}/sgd/*' 'sgd-hco={out}/sgd-hco/*'" in result.output
    info = json.loads((out / "sgd-hco" / "all-s5" / "run.json").read_text())
    assert info["finished"] is True and info["init_from"] == str(out / "_pretrain" / "all-s5")
    again = sweep("--config", config, "--optimizers", "sgd,sgd-hco", "--seeds", "5",
                  "--out", out, "--share-pretraining", "--dry-run")
    assert again.exit_code == 0 and again.output.count(" done ") == 3
    rerun = sweep("--config", config, "--optimizers", "sgd,sgd-hco", "--seeds", "5",
                  "--out", out, "--share-pretraining")
    assert rerun.exit_code == 0 and rerun.output.count("skipped") == 3
    assert "train " not in rerun.output


def test_failed_runs_are_reported_and_exit_1(config, tmp_path):
    raw = yaml.safe_load(config.read_text())
    raw["data"]["labeled_batch_size"] = 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = sweep("--config", bad, "--optimizers", "sgd,sgd-hco", "--seeds", "1",
                   "--out", tmp_path / "sw", "--share-pretraining")
    assert result.exit_code == 1
    assert "cannot fill a labeled batch of 8" in result.output
    assert "base run" in result.output and "failed" in result.output
    assert "error: 3 of 3 runs failed" in result.output


@pytest.mark.parametrize(("changes", "flags", "message"), [
    ({"--optimizers": "sgd,lion"}, [], "Unknown optimizer 'lion'"),
    ({"--optimizers": ","}, [], "--optimizers is empty"),
    ({"--seeds": "1,x"}, [], "--seeds '1,x': expected integers"),
    ({"--folds": "L0U0,L9U9"}, [], "fold L9U9 does not exist"),
    ({}, ["--lcc"], "--lcc applies to --evaluate"),
    ({"--gpus": "4"}, [], "--gpus 4: only 0 CUDA device(s) are available"),
    ({"--optimizers": "sgd,adamw"}, ["--share-pretraining"], "use another optimizer family"),
    ({"--partition": "gpu"}, [], "--partition applies to --executor slurm"),
    ({"--executor": "slurm", "--time": "4h"}, [], "'4h' is not a Slurm time limit"),
    ({"--executor": "slurm", "--gpus": "2"}, [], "--gpus and --runs-per-gpu apply to"),
    ({"--executor": "slurm", "--runs-per-gpu": "2"}, [], "--gpus and --runs-per-gpu apply to"),
    ({"--runs-per-gpu": "two"}, [], "--runs-per-gpu 'two': expected a count of at least 1"),
    ({"--runs-per-gpu": "0"}, [], "--runs-per-gpu '0': expected a count of at least 1"),
    ({"--log": "wandb"}, [], "unknown sink 'wandb'"),
    ({"--status": "x"}, [], "--status OUT reads a sweep folder; give no --config"),
])
def test_user_errors_are_one_line(config, tmp_path, changes, flags, message):
    options = {"--config": str(config), "--optimizers": "sgd", "--seeds": "1",
               "--out": str(tmp_path / "sw"), **changes}
    result = sweep(*[x for kv in options.items() for x in kv], *flags, "--dry-run")
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "sw").exists()


def test_status_of_a_sweep_folder(config, tmp_path):
    out = tmp_path / "sw"
    missing = sweep("--status", out)
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"error: {out} holds no sweep plan (_configs/<arm>/<run>.yaml); start the sweep with "
        "hco sweep --config ... --out OUT"]
    assert sweep("--seeds", "1", "--out", out).output.startswith(
        "error: give --config, --seeds and --out (or --status OUT)")
    ran = sweep("--config", config, "--optimizers", "sgd", "--seeds", "1,2", "--out", out)
    assert ran.exit_code == 0, ran.output
    (out / "sgd" / "all-s2" / "run.json").unlink()  # its job said done, its files disagree
    shown = sweep("--status", out)
    assert shown.exit_code == 0, shown.output
    rows = [[c.strip() for c in line.split("│")[1:6]] for line in shown.output.splitlines()
            if "sgd/all" in line]
    best = json.loads((out / "sgd" / "all-s1" / "run.json").read_text())["best"]["score"]
    assert [[row[0], row[1], row[3], row[4]] for row in rows] == [
        ["sgd/all-s1", "done", "-", f"best dice {best:.4f}"],
        ["sgd/all-s2", "failed", "-", "ended before finishing"]]
    assert shown.output.strip().splitlines()[-1] == "1 done, 1 failed"


def test_slurm_without_srun_is_one_line(config, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = sweep("--config", config, "--optimizers", "sgd", "--seeds", "1", "--out",
                   tmp_path / "sw", "--executor", "slurm", "--partition", "gpu")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --executor slurm: 'srun' is not on PATH; submit from a Slurm login node, or "
        "run the jobs here with --executor submitit-local"]


def test_submitit_local_executor_end_to_end(config, tmp_path):
    out = tmp_path / "sw"
    result = sweep("--config", config, "--optimizers", "sgd-hco", "--seeds", "3", "--out", out,
                   "--executor", "submitit-local", "--time", "10", "--evaluate")
    assert result.exit_code == 0, result.output
    assert "1 done\ncompare with:" in result.output and " submitted " in result.output
    info = json.loads((out / "sgd-hco" / "all-s3" / "run.json").read_text())
    assert info["finished"] is True
    assert (out / "sgd-hco" / "all-s3" / "eval" / "best" / "summary.json").is_file()
    log = (out / "_logs" / "sgd-hco" / "all-s3.log").read_text(encoding="utf-8").splitlines()
    assert "val dice" in log[-4] and log[-3].endswith("training finished")
    assert log[-2].endswith("evaluate the test split with best.pt")
    assert log[-1].endswith("done (trained)")
    again = sweep("--config", config, "--optimizers", "sgd-hco", "--seeds", "3", "--out", out,
                  "--executor", "submitit-local", "--evaluate")
    assert again.exit_code == 0 and " done " in again.output and "submitted" not in again.output
