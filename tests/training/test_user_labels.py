"""Training on users' label conventions: arbitrary label values and scribbles (ignore label)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from hco_cli.config import validate_config
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.training.entry import train

SHAPE = (32, 32, 16)


def _scribbles(root: Path, n: int = 4) -> Path:
    """Images of two blocks; labels 200/600 on a few strokes, 255 (unannotated) elsewhere."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.normal(0.0, 0.1, SHAPE).astype(np.float32)
        image[4:14, 4:28, 2:14] += 1.0
        image[18:28, 4:28, 2:14] += 2.0
        label = np.full(SHAPE, 255, np.uint16)
        label[0:2] = 0  # background strokes
        label[8:10, 10:20, 6:9] = 200
        label[22:24, 10:20, 6:9] = 600
        for sub, array in (("img", image), ("seg", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / sub / f"s{i}.nii.gz"))
    return root


def test_scribbles_with_label_values_train_on_k_classes(tmp_path: Path) -> None:
    root = _scribbles(tmp_path / "raw")
    prepare_generic(tmp_path / "ds", root=root, images="img/*.nii.gz", labels="seg/*.nii.gz",
                    ignore_label=255, split=SplitOptions(labeled=2, val=1, test=1))
    config = validate_config({
        "data": {"path": str(tmp_path / "ds"), "patch_size": [32, 32, 16],
                 "labeled_batch_size": 2, "unlabeled_batch_size": 0, "augment": "none"},
        "model": {"n_filters": 2},
        "framework": {"name": "supervised", "iterations": 3},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "validation": {"stride": [16, 16, 8], "batch_size": 2, "every": 3},
        "device": "cpu", "run_dir": str(tmp_path / "run"), "log_every": 1,
    })
    result = train(config)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["num_classes"] == 3
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [r["loss_l"] for r in records if "loss_l" in r]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert result.best_dice is not None and math.isfinite(result.best_dice)
