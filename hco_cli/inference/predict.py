"""``hco predict``: segment whole volumes with one or more trained runs, on the original grid.

Inputs are a split of a prepared dataset (by default the runs' own, test split) or raw image
files, which are preprocessed by the plan the runs were trained with (``plans.json``; no
prepared dataset needed, :mod:`hco_cli.inference.inputs`). Each case goes through the sliding
window of the run's validation (patch and stride from its config); softmax probabilities are
averaged over windows, over the runs of an ensemble (:mod:`hco_cli.inference.runs`: they must
agree on plan, classes and patch) and, with ``tta``, over the window mirrored along each
subset of the three axes. Labels are made as BCP's test code makes them (foreground > 0.5 for
two classes, argmax otherwise), optionally the largest connected component per class, and
written back on the case's original grid (:mod:`hco_cli.inference.resample`; cropped-away parts
are background) in the original label values. Probabilities and an entropy map can be written
beside them (:mod:`hco_cli.inference.probabilities`). The output folder appears whole or not
at all. ``evaluate`` scores the label maps against the original label files.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hco_cli.config import stride_gap
from hco_cli.data.dataset import SplitName
from hco_cli.data.labels import LabelMap
from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation.evaluate import CaseResult, summarize_results
from hco_cli.inference.cases import (
    CasePrediction,
    Outputs,
    Progress,
    Window,
    WindowProgress,
    case_probabilities,
    label_dtype,
    labels_from_probabilities,
    predict_cases,
    write_prediction,
)
from hco_cli.inference.inputs import dataset_cases, image_cases
from hco_cli.inference.pipeline import predict_cases_pipelined
from hco_cli.inference.runs import (
    LoadedRun,
    check_labels,
    check_plans,
    load_runs,
    model_channels,
    open_dataset,
    run_plan,
    shared_fold,
    split_warnings,
)
from hco_cli.inference.scoring import (
    checkpoint_label,
    reference_labels,
    score_predictions,
    summary_data,
)
from hco_cli.inference.stitching import Stitch
from hco_cli.io_utils import atomic_dir, write_json
from hco_cli.locks import hold
from hco_cli.outputs import check_output_folder, check_replaceable, is_empty
from hco_cli.runs.layout import SUMMARY_FILE, EvalCheckpoint, RunFolder

Device = Literal["auto", "cpu", "cuda"]
Which = EvalCheckpoint
# Mirroring along x, y and z: 8 passes per window.
TTA_AXES = (0, 1, 2)

__all__ = ["CasePrediction", "Outputs", "PredictOptions", "PredictionReport",
           "Window", "case_probabilities", "label_dtype", "labels_from_probabilities", "predict",
           "predict_cases", "reference_labels", "write_prediction"]


class PredictOptions(BaseModel):
    """What to predict and how; unset window settings come from the (first) run's config."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Which | None = Field(default=None, description="run folders; default: best")
    data: Path | None = Field(default=None, description="prepared dataset; default: the run's")
    split: SplitName | None = Field(default=None, description="default: test")
    fold: str | None = Field(default=None, description="L<i>U<j>; default: the run's fold")
    images: list[Path] = Field(default_factory=list, description="raw image files or folders")
    out: Path | None = Field(default=None, description="default: RUN/eval/<checkpoint>/preds")
    stride: tuple[int, int, int] | None = None
    batch_size: int | None = Field(default=None, ge=1)
    amp: bool | None = Field(default=None, description="bf16 autocast; default: the run's amp")
    channels_last: bool | None = Field(default=None, description="the network in the 3-D "
                                       "channels-last layout; default: the run's, on CUDA")
    device: Device = "auto"
    tta: bool = Field(default=False, description="mirror each window along x, y and z")
    stitch: Stitch = "auto"
    save_probabilities: bool = False
    uncertainty: bool = False
    lcc: bool = False
    evaluate: bool = False
    force: bool = False
    pipeline: bool = Field(default=True, description="read ahead, write and score beside the "
                           "device work, labels and components on the device; False: one "
                           "case after another, labels on the host (the earlier path)")

    @field_validator("stride")
    @classmethod
    def _positive(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("every stride must be >= 1")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> PredictOptions:
        if self.images and self.split is not None:
            raise ValueError("--split applies to prepared datasets, not to --images")
        if self.images and self.fold is not None:
            raise ValueError("--fold applies to prepared datasets, not to --images")
        if self.images and self.evaluate:
            raise ValueError("--evaluate needs a labeled split of a prepared dataset, "
                             "not --images")
        if self.stitch == "gpu" and self.device == "cpu":
            raise ValueError("--stitch gpu needs a CUDA device, not --device cpu")
        return self


@dataclass
class PredictionReport:
    """What ``hco predict`` did: where, with which runs and settings, and per-case timings."""

    out: Path
    checkpoint: str
    device: str
    window: Window
    cases: list[CasePrediction]
    dataset: Path | None
    split: str | None
    runs: list[Path]
    outputs: Outputs
    summary: Path | None = None
    mean_dice: dict[str, float] | None = None
    channels_last: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def passes_per_window(self) -> int:
        """Forward passes per window: runs x mirrored copies."""
        return len(self.runs) * 2 ** len(self.window.mirror_axes)


def resolve_device(name: Device) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predict(runs: Path | Sequence[Path], options: PredictOptions, *,
            progress: Progress | None = None,
            window_progress: WindowProgress | None = None) -> PredictionReport:
    """Predict a prepared split or raw images with one run folder (or .pt checkpoint) or an
    ensemble of several (globs such as ``runs/sgd-hco/*`` are expanded)."""
    device = resolve_device(options.device)
    if options.stitch == "gpu" and device.type != "cuda":
        raise ConfigError("--stitch gpu needs a CUDA device")
    loaded = load_runs([Path(runs)] if isinstance(runs, (str, Path)) else list(runs),
                       options.checkpoint, device)
    channels_last = _channels_last(loaded, options, device)
    first = loaded[0]
    dataset, split, warnings = None, None, []
    if options.images:
        plans = [run_plan(r, options.data) for r in loaded]
        check_plans(plans, [r.path for r in loaded])
        labels, channels = plans[0].labels, plans[0].channels
        cases = image_cases(options.images, plans[0])
    else:
        dataset = open_dataset(options.data, loaded)
        labels, channels = dataset.labels, dataset.info.channels
        for run in loaded:
            check_labels(run, dataset)
        split = options.split or "test"
        warnings = split_warnings(loaded, dataset, split)
        # The runs' fold names cases of the runs' dataset only.
        fold = shared_fold(loaded, options.fold, split) if options.data is None else options.fold
        cases = dataset_cases(dataset, split, fold=fold)
    window = _window(first, channels, labels.num_classes, options, device)
    out = _output(options.out, loaded)
    # A run's own eval/<checkpoint>/summary.json holds the scores of its default predictions
    # only; predictions written elsewhere (--out: another setting, --tta, an ensemble) have
    # their summary.json beside them, so `hco compare RUN` never reads the scores of a
    # prediction made otherwise than it says.
    own = RunFolder(first.run_dir) if len(loaded) == 1 and first.run_dir else None
    summary = (own.summary(first.checkpoint)
               if own and out.resolve() == own.predictions(first.checkpoint).resolve()
               else out.parent / SUMMARY_FILE)
    with hold(out):  # one writer of ``out`` for the whole prediction
        _check_output(out, force=options.force, summary=summary if options.evaluate else None,
                      keep=[p for p in (*(r.run_dir or r.path for r in loaded),
                                        dataset and dataset.root, *options.images) if p])
        references = reference_labels(dataset, [c.case for c in cases], split) if (
            options.evaluate and dataset is not None) else None
        outputs = Outputs(probabilities=options.save_probabilities,
                          uncertainty=options.uncertainty)
        scores: list[CaseResult] | None = None
        with atomic_dir(out, kind="predictions", force=options.force) as tmp:
            if options.pipeline:
                try:
                    written, scores = predict_cases_pipelined(
                        [r.model for r in loaded], cases, tmp, window, labels=labels,
                        device=device, outputs=outputs, references=references,
                        progress=progress, window_progress=window_progress)
                except DataError as exc:  # scored in the temporary folder: name the output
                    raise DataError(str(exc).replace(str(tmp), str(out))) from None
            else:
                written = predict_cases([r.model for r in loaded], cases, tmp, window,
                                        labels=labels, device=device, outputs=outputs,
                                        progress=progress, window_progress=window_progress)
        report = PredictionReport(
            out=out, checkpoint=checkpoint_label([r.checkpoint for r in loaded]),
            device=str(device), window=window, dataset=dataset.root if dataset else None,
            split=split, runs=[r.path for r in loaded], outputs=outputs,
            cases=[replace(c, path=out / c.path.relative_to(tmp)) for c in written],
            channels_last=channels_last, warnings=warnings)
        if references is not None:
            _evaluate(report, references, labels, summary, scores=scores)
    return report


def _evaluate(report: PredictionReport, references: dict[str, object], labels: LabelMap,
              target: Path, *, scores: list[CaseResult] | None) -> None:
    """Score the written predictions against the original labels (or summarise the scores the
    pipeline computed as each file was written); write summary.json."""
    extra = _summary_extra(report)
    if scores is not None:
        ordered = sorted(scores, key=lambda r: r.case)  # hco evaluate orders cases by id
        data, dice = summary_data(summarize_results(ordered, classes=labels.values[1:] or None),
                                  extra=extra)
    else:
        data, dice = score_predictions({c.case: c.path for c in report.cases}, references,
                                       labels, extra=extra)
    write_json(target, data)
    report.summary = target
    report.mean_dice = dice


def _summary_extra(report: PredictionReport) -> dict[str, object]:
    """What summary.json says about the prediction beside the metrics."""
    return {"predictions": str(report.out), "checkpoint": report.checkpoint,
               "split": report.split, "dataset": str(report.dataset), "grid": "original",
               "lcc": report.window.lcc, "stride": list(report.window.stride),
               "runs": [str(r) for r in report.runs],
               "tta_axes": list(report.window.mirror_axes),
               **({"warnings": report.warnings} if report.warnings else {}),
               "prediction_per_case": {c.case: {"seconds": c.seconds, "stitched_on": c.stitched_on,
                                                "peak_gpu_mib": c.peak_gpu_mib}
                                       for c in report.cases}}


def _output(given: Path | None, runs: Sequence[LoadedRun]) -> Path:
    """``--out``, else RUN/eval/<checkpoint>/preds of a single run folder."""
    if given is not None:
        return Path(given)
    if len(runs) > 1:
        raise ConfigError(f"{len(runs)} runs form an ensemble: choose where to write it with "
                          "--out")
    if runs[0].run_dir is None:
        raise ConfigError(f"{runs[0].path} is not inside a run folder; choose where to write "
                          "with --out")
    return RunFolder(runs[0].run_dir).predictions(runs[0].checkpoint)


def _channels_last(loaded: Sequence[LoadedRun], options: PredictOptions,
                   device: torch.device) -> bool:
    """Put every network in the 3-D channels-last layout where asked, or by default where the
    run trained in it and the device is CUDA (as in training's validation); whether it was."""
    chosen = options.channels_last
    if chosen is None:
        chosen = device.type == "cuda" and all(r.config.channels_last for r in loaded)
    if chosen:
        for run in loaded:  # 5-D weights only; Module.to converts nothing else
            run.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return chosen


def _window(run: LoadedRun, channels: int, num_classes: int, options: PredictOptions,
            device: torch.device) -> Window:
    """Sliding-window settings; refuses data whose channels or classes the model lacks."""
    shape = model_channels(run.model)
    if shape is not None and shape != (channels, num_classes):
        raise DataError(
            f"the data has {channels} channel(s) and {num_classes} classes but the model "
            f"takes {shape[0]} and predicts {shape[1]}"
        )
    config = run.config
    amp = options.amp if options.amp is not None else bool(config.amp and device.type == "cuda")
    stride = options.stride or tuple(config.validation.stride)
    if gap := stride_gap(run.patch_size, stride):
        raise ConfigError(("--" if options.stride else "the run's validation.") + gap)
    return Window(patch_size=run.patch_size,
                  stride=stride,
                  num_classes=num_classes,
                  batch_size=options.batch_size or config.validation.batch_size,
                  amp=amp, lcc=options.lcc, mirror_axes=TTA_AXES if options.tta else (),
                  stitch=options.stitch)


def _check_output(out: Path, *, force: bool, keep: list[Path], summary: Path | None) -> None:
    """Refuse an existing, non-empty ``out`` without ``force`` and, with it, anything but
    predictions that hco wrote; any ``out`` holding inputs; an existing ``summary`` (the
    evaluation that ``--evaluate`` writes) without ``force``."""
    target = Path(out).resolve()
    for path in keep:
        inside = Path(path).resolve()
        if inside == target or target in inside.parents:
            raise ConfigError(f"--out {out} would replace {path}; choose another folder")
    check_output_folder(out, option="--out")
    if summary is not None and summary.exists() and not force:
        raise DataError(f"--evaluate would replace {summary}; use --force to replace it")
    if Path(out).is_dir() and not is_empty(Path(out)):
        if not force:
            raise DataError(f"output folder {out} already exists and is not empty; "
                            "use --force to replace it")
        check_replaceable(Path(out), "predictions", option="--out")
    elif Path(out).is_dir():
        shutil.rmtree(out)  # empty, or hco's marker alone
