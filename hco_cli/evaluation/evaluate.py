"""Evaluate a folder of predicted label maps against reference labels (``hco evaluate``).

Predictions are volume files (NIfTI, NRRD, MHA/MHD) named by case id. References come from:

- a folder of volume files with the same case ids;
- the Left Atrium (UA-MT) layout: ``<CASE>/mri_norm2.h5`` with the key ``label``, given as the
  ``2018LA_Seg_Training Set`` folder or its parent; these files store no spacing (voxels only);
- a prepared dataset (a folder with ``dataset.json``): the labels of the cases that have
  predictions, on the prepared grid, with the prepared spacing, in their original values
  (:mod:`hco_cli.evaluation.references`).

A plain folder of label files must match the predictions one to one. The two other sources are
pools of references: a label without a prediction is simply not evaluated.

Means and standard deviations are taken over the cases where a value is finite (the empty-mask
policy of :mod:`hco_cli.evaluation.metrics` decides which are NaN); the standard deviation is
the population one (numpy's default, ddof=0): the paper's tables do not say which they used.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hco_cli.data.dataset import Geometry
from hco_cli.data.io import case_id_from_path, read_volume, volume_suffix
from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation.metrics import METRICS, EmptyPolicy, check_empty_policy, evaluate_pair
from hco_cli.evaluation.references import LabelSource, add_unique, find_labels, read_label
from hco_cli.io_utils import json_safe

SpacingUnit = Literal["voxel", "mm"]
_SPACING_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class CaseTask:
    """One case to evaluate: picklable, so that a worker process reads the files itself."""

    case: str
    pred: Path
    label: LabelSource
    classes: tuple[int, ...] | None
    mm: bool
    empty: EmptyPolicy
    ignore: int | None = None


@dataclass(frozen=True)
class CaseResult:
    """Metrics of one case, and the values found in its reference and its prediction."""

    case: str
    metrics: dict[str, dict[str, float]]
    label_values: tuple[int, ...] = ()
    pred_values: tuple[int, ...] = ()


@dataclass
class EvaluationSummary:
    """Per-case metrics with per-class means, standard deviations and exclusion counts."""

    cases: list[CaseResult]
    classes: list[int]
    spacing_unit: SpacingUnit
    empty_policy: EmptyPolicy
    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    std: dict[str, dict[str, float]] = field(default_factory=dict)
    n: dict[str, dict[str, int]] = field(default_factory=dict)
    n_excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    # Classes in no reference and no prediction: nothing was scored for them (NaN).
    absent: list[int] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """``summary.json`` content: required keys first; NaN becomes null."""
        return {
            "metric_per_case": [
                {"case": r.case, "metrics": json_safe(r.metrics)} for r in self.cases
            ],
            "mean": json_safe(self.mean),
            "std": json_safe(self.std),
            "spacing_unit": self.spacing_unit,
            "classes": [str(c) for c in self.classes],
            "n": self.n,
            "n_excluded": self.n_excluded,
            "empty_policy": self.empty_policy,
            "std_ddof": 0,
            "dropped_cases": self.dropped,
            "absent_classes": [str(c) for c in self.absent],
        }

    def to_csv_text(self) -> str:
        """One row per case and class; Dice and Jaccard as fractions; NaN as an empty field."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "class", *METRICS])
        for result in self.cases:
            for c, values in result.metrics.items():
                row = ["" if math.isnan(values[m]) else repr(values[m]) for m in METRICS]
                writer.writerow([result.case, c, *row])
        return buffer.getvalue()


def evaluate_folders(
    pred_dir: Path,
    label_dir: Path,
    *,
    classes: Sequence[int] | None = None,
    ignore: int | None = None,
    mm: bool = False,
    empty: EmptyPolicy = "nan",
    allow_missing: bool = False,
    jobs: int | None = None,
) -> EvaluationSummary:
    """Pair predictions with references by case id and evaluate every case (in parallel).

    ``classes`` defaults to every non-zero value found in the references (union over cases),
    plus the classes of ``dataset.json`` for a prepared dataset. Reference voxels of value
    ``ignore`` (default: a prepared dataset's ignore label) count as background in both maps.
    Distances are in voxels, or in millimetres (reference spacing) with ``mm``. Results do
    not depend on ``jobs``.
    """
    predictions = _find_predictions(Path(pred_dir))
    refs = find_labels(Path(label_dir))
    cases, dropped = _pair(predictions, refs.sources, pool=refs.pool,
                           allow_missing=allow_missing)
    summary = evaluate_cases({c: predictions[c] for c in cases},
                             {c: refs.sources[c] for c in cases}, classes=classes,
                             default_classes=refs.classes,
                             ignore=ignore if ignore is not None else refs.ignore, mm=mm,
                             empty=empty, dropped=dropped, jobs=jobs)
    if classes is not None and summary.absent:
        raise DataError(f"--classes: {_names([str(c) for c in summary.absent])} appear(s) in no "
                        "reference and no prediction; nothing to score")
    return summary


def evaluate_cases(
    predictions: dict[str, Path],
    labels: dict[str, LabelSource],
    *,
    classes: Sequence[int] | None = None,
    default_classes: Sequence[int] = (),
    ignore: int | None = None,
    mm: bool = False,
    empty: EmptyPolicy = "nan",
    dropped: Sequence[str] = (),
    jobs: int | None = None,
) -> EvaluationSummary:
    """Evaluate paired predictions and references (the same case ids), in parallel."""
    check_empty_policy(empty)
    wanted = _check_classes(classes)
    n_jobs = _check_jobs(jobs)
    cases = sorted(predictions)
    if mm:
        h5_case = next((c for c in cases if labels[c].kind == "h5"), None)
        if h5_case is not None:
            raise ConfigError(
                f"--mm needs the voxel spacing, but h5 labels store none (case {h5_case}); "
                "evaluate in voxels"
            )
    tasks = [CaseTask(c, predictions[c], labels[c], wanted, mm, empty, ignore) for c in cases]
    return summarize_results(_run(tasks, n_jobs), classes=wanted,
                             default_classes=default_classes, mm=mm, empty=empty,
                             dropped=dropped)


def summarize_results(
    results: list[CaseResult],
    *,
    classes: Sequence[int] | None = None,
    default_classes: Sequence[int] = (),
    mm: bool = False,
    empty: EmptyPolicy = "nan",
    dropped: Sequence[str] = (),
) -> EvaluationSummary:
    """The summary of per-case results (in case order) that :func:`evaluate_case` computed,
    wherever it ran: :func:`evaluate_cases` scores files it is given, ``hco predict`` scores
    each case as soon as its file is written."""
    wanted = _check_classes(classes)
    final = list(wanted) if wanted is not None else _found_classes(results, default_classes)
    if wanted is None:
        _refuse_stray_values(results, final)
    seen = {v for r in results for v in (*r.label_values, *r.pred_values)}
    absent = [c for c in final if c not in seen]
    if len(absent) == len(final):
        raise DataError(f"class(es) {_names([str(c) for c in absent])} appear in no reference "
                        "and no prediction; nothing to score")
    filled = [_fill_missing_classes(r, final, empty) for r in results]
    summary = EvaluationSummary(
        cases=filled, classes=final, spacing_unit="mm" if mm else "voxel",
        empty_policy=empty, dropped=list(dropped), absent=absent,
    )
    _aggregate(summary)
    return summary


def parse_classes(text: str) -> list[int]:
    """Parse ``"1,2"`` into ``[1, 2]`` (positive label values)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"--classes {text!r}: expected comma-separated integers, e.g. 1,2"
        raise ConfigError(message) from None
    if not values:
        raise ConfigError("--classes is empty; give label values such as 1,2")
    return values


def evaluate_case(task: CaseTask) -> CaseResult:
    """Read, check and evaluate one case; runs in a worker process."""
    pred, pred_geometry = read_volume(task.pred)
    gt, gt_geometry = read_label(task.label)
    pred, gt = _as_labels(pred, task.pred), _as_labels(gt, task.label.path)
    if pred.shape != gt.shape:
        hint = ("; a prepared dataset holds its labels on the prepared (cropped, resampled) "
                "grid, while predictions are written on the scans' own: evaluate against the "
                "original label files" if task.label.kind == "prepared" else "")
        raise DataError(
            f"case {task.case}: prediction shape {pred.shape} differs from label shape "
            f"{gt.shape} ({task.pred}){hint}"
        )
    if gt_geometry is not None:
        _check_geometry(task.case, pred_geometry, gt_geometry)
    if task.ignore is not None:
        ignored = gt == task.ignore
        gt, pred = np.where(ignored, 0, gt), np.where(ignored, 0, pred)
    label_values, pred_values = _present_values(gt), _present_values(pred)
    if task.classes is not None:
        classes: tuple[int, ...] = task.classes
    else:
        classes = tuple(sorted(set(label_values) | set(pred_values)))
    spacing = gt_geometry.spacing if task.mm and gt_geometry is not None else None
    values = evaluate_pair(pred, gt, classes=classes, spacing=spacing, empty=task.empty)
    return CaseResult(task.case, values, label_values, pred_values)


def _run(tasks: list[CaseTask], jobs: int) -> list[CaseResult]:
    if jobs == 1 or len(tasks) <= 1:
        return [evaluate_case(t) for t in tasks]
    # Deferred: concurrent.futures costs about 4 ms to import, and --jobs 1 never needs it.
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                             mp_context=worker_context()) as pool:
        futures = [pool.submit(evaluate_case, t) for t in tasks]
        try:
            return [f.result() for f in futures]  # task order: the first failing case is named
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _find_predictions(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"prediction folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and volume_suffix(path):
            add_unique(found, case_id_from_path(path), path)
    if not found:
        raise DataError(f"{folder}: no prediction volumes (.nii.gz, .nii, .nrrd, .mha, .mhd)")
    return found


def _pair(
    predictions: dict[str, Path], labels: dict[str, LabelSource], *, pool: bool,
    allow_missing: bool,
) -> tuple[list[str], list[str]]:
    """Matched case ids, and the ids dropped with ``allow_missing``."""
    matched = sorted(set(predictions) & set(labels))
    no_label = sorted(set(predictions) - set(labels))
    no_pred = [] if pool else sorted(set(labels) - set(predictions))
    problems = []
    if no_label:
        problems.append(f"no label for {len(no_label)} prediction(s): {_names(no_label)}")
    if no_pred:
        problems.append(f"no prediction for {len(no_pred)} label(s): {_names(no_pred)}")
    if problems and not allow_missing:
        raise DataError("; ".join(problems) + " (--allow-missing evaluates the matched cases)")
    if not matched:
        raise DataError("no case has both a prediction and a label; check the case ids")
    return matched, no_label + no_pred


def _names(cases: list[str], limit: int = 8) -> str:
    shown = ", ".join(cases[:limit])
    return shown + (f" and {len(cases) - limit} more" if len(cases) > limit else "")


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map; floats are accepted only when every value is a whole number."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "f":
        rounded = np.rint(array)
        if np.all(np.isfinite(array)) and np.array_equal(rounded, array):
            return rounded.astype(np.int64)
    raise DataError(f"{path}: non-integer labels (dtype {array.dtype}); expected a label map")


_FEW_VALUES = 64  # label values found by comparison; above, by histogram


def _present_values(array: np.ndarray) -> tuple[int, ...]:
    """Non-zero values of an integer label map. Label maps hold a few small non-negative
    values: a vectorised max, then one comparison per candidate value (a histogram casts the
    whole map to 64-bit integers first, about 100x slower on an LA volume)."""
    if array.dtype.kind in "iu" and array.size:  # no ravel: a strided map is not copied
        low = 0 if array.dtype.kind == "u" else int(array.min())
        high = int(array.max())
        if low >= 0 and high <= _FEW_VALUES:  # the maximum is present: not compared
            return tuple(v for v in range(1, high) if (array == v).any()) + (high,) * (high > 0)
        if low >= 0 and high < 2**16:
            return tuple(int(v) for v in np.flatnonzero(np.bincount(array.ravel())) if v != 0)
    return tuple(int(v) for v in np.unique(array) if v != 0)


def _check_geometry(case: str, pred: Geometry, label: Geometry) -> None:
    if not np.allclose(pred.spacing, label.spacing, rtol=_SPACING_RTOL, atol=0.0):
        raise DataError(
            f"case {case}: prediction spacing {pred.spacing} differs from label spacing "
            f"{label.spacing}"
        )
    if not np.allclose(pred.origin, label.origin, rtol=_SPACING_RTOL, atol=_ORIGIN_ATOL_MM):
        raise DataError(
            f"case {case}: prediction origin {pred.origin} differs from label origin "
            f"{label.origin}"
        )
    if not np.allclose(pred.direction, label.direction, rtol=0.0, atol=_DIRECTION_ATOL):
        raise DataError(f"case {case}: prediction and label axis directions differ")


def _found_classes(results: list[CaseResult], dataset_classes: Sequence[int]) -> list[int]:
    found = set(dataset_classes)
    for result in results:
        found.update(result.label_values)
    if not found:
        raise DataError("the labels contain no foreground value; choose classes with --classes")
    return sorted(found)


def _fill_missing_classes(
    result: CaseResult, classes: list[int], empty: EmptyPolicy
) -> CaseResult:
    """Keep only ``classes``; a class absent from both masks of a case is scored as empty."""
    both_empty = 0.0 if empty == "bcp" else math.nan  # BCP scores an empty prediction as 0
    metrics = {
        str(c): result.metrics.get(str(c), dict.fromkeys(METRICS, both_empty)) for c in classes
    }
    return CaseResult(result.case, metrics, result.label_values, result.pred_values)


def _refuse_stray_values(results: list[CaseResult], classes: list[int]) -> None:
    """A prediction value that is no class means another label map: refuse, never drop it."""
    for result in results:
        stray = sorted(set(result.pred_values) - set(classes))
        if stray:
            raise DataError(
                f"case {result.case}: the prediction holds value(s) {stray} that are no class "
                f"of the references ({', '.join(map(str, classes))}); the label maps differ "
                "(choose the classes to score with --classes)")


def _aggregate(summary: EvaluationSummary) -> None:
    for c in summary.classes:
        key = str(c)
        summary.mean[key], summary.std[key] = {}, {}
        summary.n[key], summary.n_excluded[key] = {}, {}
        for metric in METRICS:
            values = np.array([r.metrics[key][metric] for r in summary.cases], dtype=np.float64)
            finite = values[np.isfinite(values)]
            summary.n[key][metric] = int(finite.size)
            summary.n_excluded[key][metric] = int(values.size - finite.size)
            summary.mean[key][metric] = float(finite.mean()) if finite.size else math.nan
            summary.std[key][metric] = float(finite.std()) if finite.size else math.nan


def _check_classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    values = tuple(sorted({int(c) for c in classes}))
    if not values or any(c <= 0 for c in values):
        raise ConfigError(f"classes {list(classes)}: give positive label values (0 is background)")
    return values


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def worker_context() -> Any:
    """The multiprocessing context of scoring workers: fork where available (as PyTorch's
    DataLoader does), so the caller's main module is not imported again, as forkserver and
    spawn would; the workers only use numpy, h5py, nibabel and (rarely) scipy."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return multiprocessing.get_context(method)


def _check_jobs(jobs: int | None) -> int:
    if jobs is None:
        return usable_cores()
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be at least 1")
    return jobs


