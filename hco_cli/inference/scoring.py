"""``hco predict --evaluate``: the written label maps scored against the original label files,
in original geometry (never against the prepared, possibly cropped labels)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.io import volume_suffix
from hco_cli.data.labels import LabelMap
from hco_cli.errors import DataError
from hco_cli.evaluation.evaluate import (
    CaseTask,
    EvaluationSummary,
    evaluate_cases,
)
from hco_cli.evaluation.references import LabelSource
from hco_cli.inference.resample import same_grid


def reference_labels(dataset: PreparedDataset, cases: list[str],
                     split: str | None) -> dict[str, Any]:
    """Each case's original label file; its prepared label where that is the same (neither
    cropped nor resampled: generated cases, or a source file no longer there)."""
    out = {}
    for case in cases:
        if not dataset.has_label(case):
            raise DataError(f"--evaluate: case {case} of split {split!r} has no label "
                            f"in {dataset.root}")
        geometry = dataset.geometry(case)
        path = Path(geometry.source_label) if geometry.source_label else None
        if path is not None and path.exists():
            out[case] = LabelSource("volume" if volume_suffix(path) else "h5", path, case)
        elif geometry.crop is None and same_grid(geometry.prepared, geometry.original):
            out[case] = LabelSource("prepared", dataset.root, case)
        else:
            raise DataError(f"--evaluate: case {case}: original label file {path} not found "
                            "(the case was cropped or resampled, and evaluation reads the "
                            "original, uncropped labels)")
    return out


def score_predictions(predictions: dict[str, Path], references: dict[str, Any],
                      labels: LabelMap, *, extra: dict[str, Any]) -> tuple[dict[str, Any],
                                                                            dict[str, float]]:
    """summary.json's content (``extra`` added) and the mean Dice per class."""
    summary = evaluate_cases(predictions, references, classes=labels.values[1:] or None,
                             ignore=labels.ignore_value)
    return summary_data(summary, extra=extra)


def import_scoring_modules(references: dict[str, Any]) -> None:
    """Import what :func:`~hco_cli.evaluation.evaluate.evaluate_case` imports lazily (nibabel
    for NIfTI files that are not plain, h5py for h5 labels), so that scoring workers forked
    afterwards inherit the modules instead of importing them on their first case: with one
    worker per case, every case paid that (0.1 s on a 2-core CPU box, where scoring a
    random-weight LA prediction takes 1.2-1.5 s; ``results/speed/predict-scoring-cpu.txt``).
    The importing process pays it once. Not scipy.spatial (0.15 s): the metrics use its k-d
    tree only beyond ``_BRUTE_FORCE_PAIRS`` far surface voxel pairs, which almost no case
    reaches."""
    names = ["nibabel"]
    if any(r.kind == "h5" for r in references.values()):
        names.append("h5py")
    for name in names:
        importlib.import_module(name)


def case_task(case: str, prediction: Path, reference: Any, labels: LabelMap) -> CaseTask:
    """The task :func:`score_predictions` makes of one case (``hco evaluate``'s defaults: the
    label map's foreground classes, distances in voxels, the ``nan`` empty-mask policy)."""
    foreground = labels.values[1:]
    classes = tuple(sorted({int(c) for c in foreground})) if foreground else None
    return CaseTask(case, prediction, reference, classes, False, "nan", labels.ignore_value)


def summary_data(summary: EvaluationSummary, *, extra: dict[str, Any]) -> tuple[
        dict[str, Any], dict[str, float]]:
    """summary.json's content (``extra`` added) and the mean Dice per class."""
    data = summary.to_json_dict()
    data.update(extra)
    return data, {c: summary.mean[c]["dice"] for c in summary.mean}


def checkpoint_label(names: Sequence[str]) -> str:
    """One name for the checkpoints of an ensemble ('best', or 'best+last' where they differ)."""
    return "+".join(dict.fromkeys(names))
