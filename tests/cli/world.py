"""A small workspace that every command can be pointed at: a prepared dataset, finished,
interrupted and edited runs, predictions, a user's notes and a user's file.

Built through the library (prepare, train, predict), never by hand, so that every folder holds
exactly what hco writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from hco_cli.config import validate_config
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.inference.predict import PredictOptions, predict
from hco_cli.locks import lock_path
from hco_cli.training.entry import train
from hco_cli.training.events import ProgressEvent

SHAPE = (32, 32, 16)


class Stop(Exception):
    """Ends a run half-way, as a killed process would."""


def tiny_raw(data: Path, run_dir: Path, **top: Any) -> dict[str, Any]:
    """Supervised training of a 2-filter V-Net for 3 iterations, a checkpoint after each."""
    return {
        "data": {"path": str(data), "patch_size": [16, 16, 16], "labeled_batch_size": 2,
                 "unlabeled_batch_size": 0, "augment": "none", "device": "cpu"},
        "model": {"n_filters": 2},
        "framework": {"name": "supervised", "iterations": 3},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "validation": {"stride": [8, 8, 8], "batch_size": 2, "every": 1},
        "device": "cpu", "run_dir": str(run_dir), "checkpoint_every": 1, "log_every": 1,
        "diagnostics_every": 0, **top,
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _interrupted(data: Path, run: Path) -> None:
    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.iteration == 2:
            raise Stop

    with contextlib.suppress(Stop):
        train(validate_config(tiny_raw(data, run)), progress=stop)


def build(root: Path) -> Path:
    """The workspace under ``root``; returns ``root``."""
    data = root / "data" / "syn"
    prepare_synthetic(data, labeled=2, unlabeled=1, val=1, test=2, classes=1, shape=SHAPE)
    runs = root / "runs"
    train(validate_config(tiny_raw(data, runs / "done")))
    predict(runs / "done", PredictOptions(device="cpu", evaluate=True))
    shutil.copytree(runs / "done", runs / "noeval", ignore=shutil.ignore_patterns("eval"))
    _interrupted(data, runs / "edited")
    shutil.copytree(runs / "edited", runs / "reseeded")
    shutil.copytree(runs / "edited", runs / "locked")
    for name, change in (("edited", {"iterations": 5}), ("reseeded", {"seed": 9})):
        path = runs / name / "config.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        (raw["framework"] if "iterations" in change else raw).update(change)
        write_config(path, raw)
    _stray_predictions(runs / "done" / "eval" / "best" / "preds", root / "stray")
    configs = root / "configs"
    configs.mkdir()
    write_config(configs / "tiny.yaml", tiny_raw(data, runs / "new"))
    bcp = {"name": "bcp", "pretrain_iterations": 1, "selftrain_iterations": 1}
    write_config(configs / "bcp_batch1.yaml", {
        **tiny_raw(data, runs / "new", framework=bcp),
        "data": {**tiny_raw(data, runs / "new")["data"], "labeled_batch_size": 1,
                 "unlabeled_batch_size": 4}})
    write_config(configs / "patch24.yaml", {
        **tiny_raw(data, runs / "new"),
        "data": {**tiny_raw(data, runs / "new")["data"], "patch_size": [24, 24, 16]}})
    write_config(configs / "bn_one_value.yaml", {
        **tiny_raw(data, runs / "new"),
        "data": {**tiny_raw(data, runs / "new")["data"], "labeled_batch_size": 1}})
    write_config(configs / "in_one_voxel.yaml", {
        **tiny_raw(data, runs / "new"),
        "model": {**tiny_raw(data, runs / "new")["model"], "normalization": "instancenorm"}})
    (root / "notes").mkdir()
    (root / "notes" / "ideas.txt").write_text("my notes\n", encoding="utf-8")
    (root / "afile.txt").write_text("the user's file\n", encoding="utf-8")
    return root


def _stray_predictions(preds: Path, out: Path) -> None:
    """A copy of ``preds`` whose first case also predicts value 3, a class no label has."""
    out.mkdir()
    for i, path in enumerate(sorted(preds.glob("*.nii.gz"))):
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj).copy()
        if i == 0:
            labels[0, 0, 0] = 3
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), str(out / path.name))


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root``: kind, size and modification time of files."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir", 0, 0)
        else:
            stat = path.stat()
            out[rel] = ("file", stat.st_size, stat.st_mtime_ns)
    return out


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold ``target``'s lock on a file description of its own, as another process would."""
    path = lock_path(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        yield
    finally:
        os.close(fd)
        path.unlink()


def failing_writes(root: Path, code: int) -> Callable[[Any], None]:
    """A patcher making every write under ``root`` fail with ``code`` (EROFS, ENOSPC, ...)."""
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def under(path: Any) -> bool:
        return str(os.path.abspath(os.fspath(path))).startswith(str(root))

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writing and under(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if under(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        real_mkdir(path, *args, **kwargs)

    def patch(monkeypatch: Any) -> None:
        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return patch


READ_ONLY = errno.EROFS
NO_SPACE = errno.ENOSPC
