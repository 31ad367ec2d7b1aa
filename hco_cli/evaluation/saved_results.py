"""Readers for saved results: ``summary.json``, ``run.json`` and ``metrics.jsonl``.

``hco compare`` reads what ``hco evaluate`` and ``hco train`` wrote and never recomputes
anything. These readers validate the shape they rely on and fail with one message naming the
file and the field; unknown extra keys are ignored so that the writers can grow.
"""

from __future__ import annotations

import gzip
import json
import lzma
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hco_cli.errors import DataError
from hco_cli.evaluation.metrics import EMPTY_POLICIES
from hco_cli.optimizer_defaults import default_lr
from hco_cli.runs.layout import RunFolder

SUMMARY_METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
SPACING_UNITS: tuple[str, ...] = ("voxel", "mm")
# How ``hco predict --evaluate`` made the predictions it scored (recorded in its summary.json;
# ``hco evaluate`` of files made elsewhere records none): comparisons note arms that differ.
SCORING_KEYS: tuple[str, ...] = ("lcc", "tta_axes", "stride")
TRAIN_PHASES: tuple[str, ...] = ("pretrain", "train", "selftrain")
# The compressed run logs, by suffix (RunFolder.metrics_logs): ``.xz`` archives, older ``.gz``
_ARCHIVE_OPENERS: dict[str, Callable[..., Any]] = {".xz": lzma.open, ".gz": gzip.open}


@dataclass(frozen=True)
class Summary:
    """Per-case metrics of one evaluation: ``cases[case][class][metric]`` (null -> NaN)."""

    path: Path
    cases: dict[str, dict[str, dict[str, float]]]
    classes: tuple[str, ...]
    spacing_unit: str
    # :data:`SCORING_KEYS` the summary records, each as compact JSON ("true", "[0, 1, 2]")
    scoring: dict[str, str] = field(default_factory=dict)
    # ``hco evaluate --empty``'s convention for empty masks; None where the file records none
    empty_policy: str | None = None
    # The checkpoint ``hco predict --evaluate`` scored ("best", "last", "best+last" for an
    # ensemble of both, ...); None where the file records none (``hco evaluate``)
    checkpoint: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """The fields of ``run.json`` that comparisons show."""

    path: Path
    dataset: str
    framework: str
    optimizer: str
    seed: int
    fold: str | None
    labeled: int
    unlabeled: int
    # The digests of the prepared dataset it trained on (hco_cli.data.identity); None in runs
    # from before hco recorded them.
    dataset_identity: tuple[tuple[str, str], ...] | None = None


# The optimizer diagnostics ``hco train`` adds to a step record every diagnostics_every steps
# (hco_cli.optim.diagnostics), with the mask's admitted fraction of every masked step.
DIAGNOSED_FIELDS: tuple[str, ...] = (
    "step_norm", "step_ratio", "grad_norm_l", "grad_norm_u", "cos_lu", "admitted",
    "admitted_std", "admitted_min", "admitted_max")


@dataclass(frozen=True)
class TrainStep:
    """One training-step record of ``metrics.jsonl`` (``ratio`` null -> NaN).

    ``diagnostics``: the diagnosed step's :data:`DIAGNOSED_FIELDS` (null -> NaN); None on the
    steps without diagnostics.
    """

    phase: str
    iter: int
    epoch: int
    loss_l: float
    loss_u: float
    ratio: float
    diagnostics: dict[str, float] | None = None


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning I/O and syntax problems into one-line DataErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"cannot read {path}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None


def _number(value: Any, where: str, *, nullable: bool = True) -> float:
    if value is None and nullable:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a number or null" if nullable else "a number"
        raise DataError(f"{where}: expected {expected}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: expected an integer, got {value!r}")
    return value


def _string(value: Any, where: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {value!r}")
    return value


def _case_metrics(entry: Any, where: str) -> tuple[str, dict[str, dict[str, float]]]:
    if not isinstance(entry, dict) or "case" not in entry or "metrics" not in entry:
        raise DataError(f"{where}: expected an object with 'case' and 'metrics'")
    case = entry["case"]
    if isinstance(case, bool) or not isinstance(case, str | int):
        raise DataError(f"{where}: 'case' must be a string, got {case!r}")
    metrics = entry["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise DataError(f"{where} (case {case}): 'metrics' must be a non-empty object")
    out: dict[str, dict[str, float]] = {}
    for cls, values in metrics.items():
        if not isinstance(values, dict):
            raise DataError(f"{where} (case {case}) class {cls}: expected an object of metrics")
        missing = [m for m in SUMMARY_METRICS if m not in values]
        if missing:
            raise DataError(f"{where} (case {case}) class {cls}: missing {', '.join(missing)}")
        out[str(cls)] = {
            m: _number(values[m], f"{where} (case {case}) class {cls} {m}") for m in SUMMARY_METRICS
        }
    return str(case), out


def read_summary(path: Path) -> Summary:
    """Read and validate a ``summary.json`` of ``hco evaluate --json``."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object (an hco evaluate summary)")
    missing = [k for k in ("metric_per_case", "mean", "std", "spacing_unit") if k not in data]
    if missing:
        raise DataError(f"{path}: not an evaluation summary (missing {', '.join(missing)})")
    if not isinstance(data["mean"], dict) or not isinstance(data["std"], dict):
        raise DataError(f"{path}: 'mean' and 'std' must be objects")
    unit = data["spacing_unit"]
    if unit not in SPACING_UNITS:
        raise DataError(f"{path}: spacing_unit must be 'voxel' or 'mm', got {unit!r}")
    entries = data["metric_per_case"]
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: metric_per_case must be a non-empty list")
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for i, entry in enumerate(entries):
        case, metrics = _case_metrics(entry, f"{path}: metric_per_case[{i}]")
        if case in cases:
            raise DataError(f"{path}: case {case} appears twice in metric_per_case")
        cases[case] = metrics
    classes = tuple(sorted(next(iter(cases.values())), key=_class_key))
    for case, metrics in cases.items():
        if set(metrics) != set(classes):
            raise DataError(
                f"{path}: case {case} has classes {sorted(metrics)}, expected {list(classes)}"
            )
    scoring = {k: json.dumps(data[k]) for k in SCORING_KEYS if k in data}
    policy = data.get("empty_policy")
    if policy is not None and policy not in EMPTY_POLICIES:
        raise DataError(f"{path}: empty_policy must be one of {list(EMPTY_POLICIES)}, "
                        f"got {policy!r}")
    checkpoint = data.get("checkpoint")
    return Summary(path=path, cases=cases, classes=classes, spacing_unit=unit, scoring=scoring,
                   empty_policy=policy,
                   checkpoint=checkpoint if isinstance(checkpoint, str) else None)


def _class_key(cls: str) -> tuple[int, int | str]:
    """Sort label values numerically ("2" before "10"), other names after them."""
    return (0, int(cls)) if cls.isdigit() else (1, cls)


def read_run_info(run_dir: Path) -> RunInfo:
    """Read ``RUN/run.json`` (written by ``hco train``); extra keys are ignored."""
    path = RunFolder(run_dir).run_json
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    fields = ("dataset", "framework", "optimizer", "seed", "fold", "labeled", "unlabeled")
    missing = [k for k in fields if k not in data]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)}")
    return RunInfo(
        path=Path(run_dir),
        dataset=str(_string(data["dataset"], f"{path}: dataset")),
        framework=str(_string(data["framework"], f"{path}: framework")),
        optimizer=str(_string(data["optimizer"], f"{path}: optimizer")),
        seed=_integer(data["seed"], f"{path}: seed"),
        fold=_string(data["fold"], f"{path}: fold", nullable=True),
        labeled=_integer(data["labeled"], f"{path}: labeled"),
        unlabeled=_integer(data["unlabeled"], f"{path}: unlabeled"),
        dataset_identity=_identity(data.get("dataset_identity"), f"{path}: dataset_identity"),
    )


@dataclass(frozen=True)
class OptimizerSettings:
    """How a run's optimizer was set (its ``config.yaml``): the name, the learning rate it
    trained with (the config's, or the optimizer's default where the config leaves it unset:
    ``lr_default``; None where the folder keeps no config) and the further options (an HCO
    reading, a mask setting), each value as the config spells it, so that arms of one optimizer
    name (the printed SGD-HCO and a reading of it, or an equal-step control at another learning
    rate) can be told apart in a table, and a rate left to the default equals the same rate
    given."""

    name: str
    lr: float | None = None
    options: tuple[tuple[str, str], ...] = ()
    lr_default: bool = False

    def label(self, *, with_lr: bool = False) -> str:
        """``sgd-hco (refine_mask=binary)``; ``with_lr``: the learning rate first
        (``sgd (lr=0.0213)``, ``sgd (lr=default 0.01)``, ``lr=unknown`` without a config)."""
        rate = "unknown" if self.lr is None else f"{self.lr:g}"
        lr = [f"lr={'default ' if self.lr_default else ''}{rate}"] if with_lr else []
        parts = lr + [f"{k}={v}" for k, v in self.options]
        return f"{self.name} ({', '.join(parts)})" if parts else self.name


def _option_text(value: Any) -> str:
    """An option's value as YAML writes it (``true``, ``binary``, ``0.5``)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def read_optimizer_settings(run: RunInfo) -> OptimizerSettings:
    """The optimizer settings of ``run`` from its folder's ``config.yaml``; the name alone
    where the folder keeps no config."""
    path = RunFolder(run.path).config
    if not path.is_file():
        return OptimizerSettings(run.optimizer)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: not a readable run config ({exc.__class__.__name__})") from None
    section = data.get("optimizer") if isinstance(data, dict) else None
    if not isinstance(section, dict) or section.get("name") != run.optimizer:
        raise DataError(f"{path}: its optimizer section does not name {run.optimizer!r}, the "
                        "optimizer of the run.json beside it")
    lr = section.get("lr")
    options = section.get("options") or {}
    if not isinstance(options, dict):
        raise DataError(f"{path}: optimizer.options is not a mapping")
    default = default_lr(run.optimizer)
    if lr is None and default is None:
        raise DataError(f"{path}: optimizer {run.optimizer!r} is not one this version knows, so "
                        "the default learning rate its config leaves unset is unknown")
    return OptimizerSettings(
        name=run.optimizer,
        lr=default if lr is None else _number(lr, f"{path}: optimizer.lr", nullable=False),
        options=tuple(sorted((str(k), _option_text(v)) for k, v in options.items())),
        lr_default=lr is None)


def _identity(value: Any, where: str) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DataError(f"{where}: expected an object of strings")
    return tuple(sorted(value.items()))


def _train_step(record: dict[str, Any], where: str) -> TrainStep:
    missing = [k for k in ("iter", "epoch", "loss_l", "loss_u", "ratio") if k not in record]
    if missing:
        raise DataError(f"{where}: training record lacks {', '.join(missing)}")
    return TrainStep(
        phase=record["phase"],
        iter=_integer(record["iter"], f"{where}: iter"),
        epoch=_integer(record["epoch"], f"{where}: epoch"),
        loss_l=_number(record["loss_l"], f"{where}: loss_l"),
        loss_u=_number(record["loss_u"], f"{where}: loss_u"),
        ratio=_number(record["ratio"], f"{where}: ratio"),
        diagnostics=None if record.get("step_norm") is None else {
            k: _number(record.get(k), f"{where}: {k}") for k in DIAGNOSED_FIELDS},
    )


def read_run_records(run_dir: Path) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
    """Every record of ``RUN/metrics.jsonl`` (or of an archived run's ``metrics.jsonl.xz`` or
    ``.gz``: :attr:`RunFolder.metrics_logs`) in logged order, with its line number, and the
    file read.

    An unparsable *last* line without a trailing newline is taken as a write still in
    progress (a run being trained) and skipped; any other bad line is an error.
    """
    path = next((p for p in RunFolder(run_dir).metrics_logs if p.is_file()), None)
    if path is None:
        raise DataError(f"run {run_dir} has no metrics.jsonl (nor metrics.jsonl.xz or .gz)")
    try:
        opener = _ARCHIVE_OPENERS.get(path.suffix)
        if opener is None:
            text = path.read_text(encoding="utf-8")
        else:
            with opener(path, "rt", encoding="utf-8") as f:
                text = f.read()
    except (OSError, EOFError, UnicodeDecodeError, lzma.LZMAError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    lines = text.split("\n")
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object")
        records.append((number, record))
    return path, records


def read_train_steps(run_dir: Path) -> list[TrainStep]:
    """Training-step records of a run's log (:func:`read_run_records`); other phases (e.g.
    "val") are skipped."""
    path, records = read_run_records(run_dir)
    return [_train_step(record, f"{path}, line {number}") for number, record in records
            if record.get("phase") in TRAIN_PHASES]
