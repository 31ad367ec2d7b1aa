"""A tiny prepared dataset and a tiny run folder for prediction tests (built through the APIs
of ``hco prepare`` and of the training checkpoints, not by hand)."""

from __future__ import annotations

from pathlib import Path

import torch

from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.models.vnet import build_model
from hco_cli.runs.checkpoint import save_checkpoint
from hco_cli.runs.folder import copy_plan, write_config
from hco_cli.runs.layout import RunFolder

SHAPE = (16, 16, 16)
PATCH = (16, 16, 16)


def tiny_dataset(root: Path, *, classes: int = 1, test: int = 2) -> Path:
    """Synthetic phantoms of 16^3 voxels: 1 labeled, 1 unlabeled, ``test`` test cases."""
    out = root / "data" / "syn"
    prepare_synthetic(out, labeled=1, unlabeled=1, test=test, classes=classes, shape=SHAPE)
    return out


def tiny_config(dataset: Path, *, patch: tuple[int, int, int] = PATCH) -> TrainConfig:
    return validate_config({
        "data": {"path": str(dataset), "patch_size": list(patch)},
        "model": {"n_filters": 2},
        "framework": {"name": "supervised", "iterations": 1},
        "optimizer": {"name": "sgd"},
        "validation": {"stride": [8, 8, 8], "batch_size": 2},
        "device": "cpu",
    })


def tiny_run(root: Path, dataset: Path, *, classes: int = 2, seed: int = 0,
             which: tuple[str, ...] = ("best", "last"), name: str = "run",
             patch: tuple[int, int, int] = PATCH) -> tuple[Path, torch.nn.Module]:
    """A run folder with config.yaml, the dataset's plans.json (as ``hco train`` copies it)
    and checkpoints of one randomly initialised V-Net."""
    run = root / name
    config = tiny_config(dataset, patch=patch)
    torch.manual_seed(seed)
    model = build_model(config.model, in_channels=1, num_classes=classes).eval()
    run.mkdir(parents=True)
    write_config(run, config.model_dump(mode="json"))
    copy_plan(run, dataset, patch)
    for name in which:
        save_checkpoint(RunFolder(run).checkpoint(name), {
            "model": model.state_dict(), "config": config.model_dump(mode="json"),
            "in_channels": 1, "num_classes": classes, "kind": name})
    return run, model
