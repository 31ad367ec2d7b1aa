"""The run folder: what a training run leaves behind, and the rules for (re)using one.

    RUN/config.yaml              the resolved TrainConfig
    RUN/plans.json               the dataset's preprocessing plan, with the run's patch size
    RUN/run.json                 summary read by ``hco compare`` (keys in RUN_INFO_KEYS)
    RUN/metrics.jsonl            per-iteration and validation records
    RUN/checkpoints/last.pt      everything needed to resume exactly
    RUN/checkpoints/best.pt      eval-model weights chosen on validation
    RUN/checkpoints/pretrain.pt  eval-model weights at the end of a "pretrain" phase
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from hco_cli.data.plan import PLAN_FILE, read_plan, write_plan
from hco_cli.errors import CheckpointError, ConfigError
from hco_cli.io_utils import write_json, write_text

RUN_INFO_KEYS = ("dataset", "framework", "optimizer", "seed", "fold", "labeled", "unlabeled",
                 "iterations", "finished", "hco_version", "device", "wall_seconds")
_RUN_MARKERS = ("run.json", "config.yaml", "metrics.jsonl", "checkpoints")


def checkpoint_path(run_dir: Path, which: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def prepare_run_dir(run_dir: Path, *, force: bool = False) -> None:
    """Create ``run_dir``; refuse a non-empty one unless ``force`` and it holds an hco run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not force:
            raise ConfigError(
                f"run dir {run_dir} is not empty; continue it with --resume {run_dir}, "
                "overwrite it with --force, or choose another --run-dir"
            )
        if not any((run_dir / m).exists() for m in _RUN_MARKERS):
            raise ConfigError(
                f"run dir {run_dir} is not empty and does not hold an hco run; "
                "--force only replaces earlier runs"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(Path(run_dir) / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def copy_plan(run_dir: Path, dataset: Path, patch_size: tuple[int, int, int]) -> None:
    """Copy the dataset's ``plans.json`` into the run, adding the patch size; ``hco predict
    --images`` reads it there. Datasets prepared before plans existed have none to copy."""
    if (Path(dataset) / PLAN_FILE).is_file():
        plan = read_plan(Path(dataset) / PLAN_FILE)
        write_plan(Path(run_dir), plan.model_copy(update={"patch_size": tuple(patch_size)}))


def read_config_data(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a configuration mapping")
    return data


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    missing = [k for k in RUN_INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"run.json lacks {missing}")
    write_json(Path(run_dir) / "run.json", info)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no run.json)")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    return data
