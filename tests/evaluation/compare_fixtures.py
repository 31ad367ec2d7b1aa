"""Builders of the files ``hco compare`` reads, written into a test's tmp_path.

The shapes follow the agreed formats exactly: ``summary.json`` of ``hco evaluate --json``,
``run.json`` and ``metrics.jsonl`` of ``hco train``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

METRICS = ("dice", "jaccard", "hd95", "asd")
Values = Mapping[str, Mapping[str, Sequence[float]]]  # class -> metric -> per-case values


def _json_value(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def summary_dict(cases: Sequence[str], values: Values, *, unit: str = "voxel") -> dict[str, Any]:
    """A summary.json payload; NaN values are written as null."""
    per_case = []
    for i, case in enumerate(cases):
        metrics = {
            cls: {m: _json_value(float(vals[m][i])) for m in METRICS}
            for cls, vals in values.items()
        }
        per_case.append({"case": case, "metrics": metrics})
    mean = {cls: {m: float(np.nanmean(vals[m])) for m in METRICS} for cls, vals in values.items()}
    std = {cls: {m: float(np.nanstd(vals[m])) for m in METRICS} for cls, vals in values.items()}
    return {
        "metric_per_case": per_case,
        "mean": mean,
        "std": std,
        "spacing_unit": unit,
        "n_cases": len(cases),  # an extra top-level key, to be ignored
    }


def write_summary(path: Path, cases: Sequence[str], values: Values, *, unit: str = "voxel") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary_dict(cases, values, unit=unit)), encoding="utf-8")
    return path


def one_class(
    dice: Sequence[float],
    *,
    jaccard: Sequence[float] | None = None,
    hd95: Sequence[float] | None = None,
    asd: Sequence[float] | None = None,
    cls: str = "1",
) -> dict[str, dict[str, Sequence[float]]]:
    """Values of one class; Jaccard defaults to d/(2-d), distances to simple functions of d."""
    d = np.asarray(dice, dtype=np.float64)
    return {
        cls: {
            "dice": d,
            "jaccard": d / (2 - d) if jaccard is None else jaccard,
            "hd95": 20 * (1 - d) if hd95 is None else hd95,
            "asd": 5 * (1 - d) if asd is None else asd,
        }
    }


def write_run(
    root: Path,
    name: str,
    *,
    optimizer: str = "sgd",
    seed: int = 0,
    labeled: int = 4,
    unlabeled: int = 76,
    evals: Mapping[str, tuple[Sequence[str], Values]] | None = None,
    steps: Iterable[dict[str, Any]] | None = None,
    unit: str = "voxel",
    optimizer_config: Mapping[str, Any] | None = None,
) -> Path:
    """A run folder with run.json, optional eval/<checkpoint>/summary.json and metrics.jsonl,
    and with ``optimizer_config`` a config.yaml whose optimizer section (named ``optimizer``)
    holds those keys."""
    run = root / name
    run.mkdir(parents=True)
    info = {
        "dataset": "la",
        "framework": "bcp",
        "optimizer": optimizer,
        "seed": seed,
        "fold": None,
        "labeled": labeled,
        "unlabeled": unlabeled,
        "iterations": 100,  # an extra key, to be ignored
    }
    (run / "run.json").write_text(json.dumps(info), encoding="utf-8")
    if optimizer_config is not None:
        section = {"name": optimizer, **optimizer_config}
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "optimizer": section}),
                                         encoding="utf-8")
    for checkpoint, (cases, values) in (evals or {}).items():
        write_summary(run / "eval" / checkpoint / "summary.json", cases, values, unit=unit)
    if steps is not None:
        lines = [json.dumps(s) for s in steps]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


def step(
    epoch: int, it: int, ratio: float | None, *, phase: str = "selftrain", loss_l: float = 0.5
) -> dict[str, Any]:
    """One training-step record of metrics.jsonl."""
    loss_u = None if ratio is None else ratio * loss_l
    return {
        "phase": phase,
        "iter": it,
        "epoch": epoch,
        "loss_l": loss_l,
        "loss_u": 0.0 if loss_u is None else loss_u,
        "ratio": ratio,
        "admitted": 0.5,
        "lr": 0.01,
        "time": 0.1,
    }


def cases(n: int) -> list[str]:
    return [f"case{i:02d}" for i in range(n)]
