"""``hco predict``: segment whole volumes with a trained run and write them on the original grid.

Inputs are a split of a prepared dataset (by default the run's own, test split) or raw image
files, which are preprocessed by the plan the run was trained with (the run's ``plans.json``;
no prepared dataset needed, :mod:`hco_cli.inference.inputs`). Each case goes through the
sliding window of the run's validation (patch and stride from its config), softmax averaged
over windows, then labels as BCP's test code makes them (foreground probability > 0.5 for two
classes, argmax otherwise), optionally the largest connected component per class, and finally
back onto the case's original grid (:mod:`hco_cli.inference.resample`; cropped-away parts are
background) in the original label values (the label map). The output folder appears whole or
not at all.

``--evaluate`` scores these files against the original label files, in original geometry
(never against the prepared, possibly cropped labels).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from hco_cli.data.dataset import CaseGeometry, PreparedDataset, SplitName
from hco_cli.data.io import volume_suffix, write_volume
from hco_cli.data.labels import LabelMap
from hco_cli.data.plan import PLAN_FILE, DataPlan, read_plan
from hco_cli.errors import CheckpointError, ConfigError, DataError
from hco_cli.inference.inputs import InputCase, dataset_cases, image_cases
from hco_cli.inference.postprocess import keep_largest_per_class
from hco_cli.inference.resample import same_grid, to_original_grid
from hco_cli.inference.sliding_window import predict_volume
from hco_cli.io_utils import atomic_dir, write_json
from hco_cli.locks import hold
from hco_cli.outputs import check_output_folder, check_replaceable, is_empty

Progress = Callable[[int, int, str], None]
"""Called after each case as ``progress(done, total, case_id)``."""
Device = Literal["auto", "cpu", "cuda"]
Which = Literal["best", "last"]


class PredictOptions(BaseModel):
    """What to predict and how; unset window settings come from the run's config."""

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
    device: Device = "auto"
    lcc: bool = False
    evaluate: bool = False
    force: bool = False

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
        if self.images and self.evaluate:
            raise ValueError("--evaluate needs a labeled split of a prepared dataset, "
                             "not --images")
        return self


@dataclass(frozen=True)
class Window:
    """Sliding-window and post-processing settings of one prediction."""

    patch_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    num_classes: int
    batch_size: int = 4
    amp: bool = False
    lcc: bool = False


@dataclass(frozen=True)
class CasePrediction:
    """One written prediction."""

    case: str
    path: Path
    prepared_shape: tuple[int, int, int]
    original_shape: tuple[int, int, int]
    seconds: float
    note: str | None = None


@dataclass
class PredictionReport:
    """What ``hco predict`` did: where, with which settings, and per-case timings."""

    out: Path
    checkpoint: str
    device: str
    window: Window
    cases: list[CasePrediction]
    dataset: Path | None
    split: str | None
    summary: Path | None = None
    mean_dice: dict[str, float] | None = None


def labels_from_probabilities(probs: Tensor) -> Tensor:
    """(X, Y, Z) labels of (K, X, Y, Z) probabilities: fg > 0.5 for K = 2 (BCP), else argmax."""
    if probs.shape[0] == 2:
        return (probs[1] > 0.5).to(torch.long)
    return probs.argmax(dim=0)


def label_dtype(num_classes: int) -> type[np.unsignedinteger]:
    """uint8, or uint16 when a label value exceeds 255 (as prepared labels are stored)."""
    if num_classes > 65536:
        raise ConfigError(f"{num_classes} classes do not fit a uint16 label map")
    return np.uint8 if num_classes <= 256 else np.uint16


def segment(model: nn.Module, image: np.ndarray, window: Window, *,
            device: torch.device) -> np.ndarray:
    """Label map (X, Y, Z) of one prepared (C, X, Y, Z) image, on the prepared grid."""
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).to(device)  # mmaps are read-only
    probs = predict_volume(model, tensor, patch_size=window.patch_size, stride=window.stride,
                           num_classes=window.num_classes, batch_size=window.batch_size,
                           amp=window.amp)
    labels = labels_from_probabilities(probs).cpu().numpy().astype(label_dtype(window.num_classes))
    if window.lcc:
        labels = keep_largest_per_class(labels, window.num_classes)
    return labels


def write_prediction(labels: np.ndarray, geometry: CaseGeometry, path: Path,
                     label_map: LabelMap) -> None:
    """Write a prepared-grid map of class indices as NIfTI in the case's original geometry and
    original label values (atomically)."""
    original = to_original_grid(labels, prepared=geometry.prepared, original=geometry.original)
    write_volume(path, label_map.to_values(original), geometry.original)


def predict_cases(
    model: nn.Module, cases: Sequence[InputCase], out_dir: Path, window: Window, *,
    labels: LabelMap, device: torch.device, progress: Progress | None = None,
) -> list[CasePrediction]:
    """Predict and write ``<case>.nii.gz`` for every case into ``out_dir``."""
    done: list[CasePrediction] = []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        loaded = case.load()
        indices = segment(model, loaded.image, window, device=device)
        path = Path(out_dir) / f"{case.case}.nii.gz"
        write_prediction(indices, loaded.geometry, path, labels)
        done.append(CasePrediction(case=case.case, path=path,
                                   prepared_shape=loaded.geometry.prepared.shape,
                                   original_shape=loaded.geometry.original.shape,
                                   seconds=time.perf_counter() - start, note=loaded.note))
        if progress is not None:
            progress(i + 1, len(cases), case.case)
    return done


def resolve_device(name: Device) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_channels(model: nn.Module) -> tuple[int, int] | None:
    """(input channels, classes) of a convolutional network: its first and last Conv3d."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    return (convs[0].in_channels, convs[-1].out_channels) if convs else None


def predict(run: Path, options: PredictOptions, *,
            progress: Progress | None = None) -> PredictionReport:
    """Predict a prepared split or raw images with a run folder (or a .pt checkpoint)."""
    from hco_cli.training.checkpoint import load_model_for_inference

    run = Path(run)
    run_dir, name = _locate_run(run, options.checkpoint)
    device = resolve_device(options.device)
    model, config = load_model_for_inference(run, which=options.checkpoint or "best",
                                             device=device)
    dataset, split = None, None
    if options.images:
        plan = run_plan(run_dir, options.data or config.data.path)
        labels, channels = plan.labels, plan.channels
        cases = image_cases(options.images, plan)
    else:
        dataset = _open_dataset(options.data, config.data.path)
        labels, channels = dataset.labels, dataset.info.channels
        _check_labels(run_dir, dataset)
        split = options.split or "test"
        # The run's fold names cases of the run's dataset only.
        fold = options.fold or (config.data.fold if options.data is None else None)
        cases = dataset_cases(dataset, split, fold=fold)
    window = _window(model, channels, labels.num_classes, config, options, device)
    out = options.out or (run_dir / "eval" / name / "preds" if run_dir else None)
    if out is None:
        raise ConfigError(f"{run} is not inside a run folder; choose where to write with --out")
    summary = (run_dir / "eval" / name if run_dir else out.parent) / "summary.json"
    with hold(out):  # one writer of ``out`` for the whole prediction
        _check_output(out, force=options.force, summary=summary if options.evaluate else None,
                      keep=[p for p in (run_dir, run, dataset and dataset.root, *options.images)
                            if p])
        references = reference_labels(dataset, [c.case for c in cases], split) if (
            options.evaluate and dataset is not None) else None
        with atomic_dir(out, kind="predictions", force=options.force) as tmp:
            written = predict_cases(model, cases, tmp, window, labels=labels, device=device,
                                    progress=progress)
        report = PredictionReport(
            out=out, checkpoint=name, device=str(device), window=window,
            dataset=dataset.root if dataset else None, split=split,
            cases=[replace(c, path=out / c.path.name) for c in written])
        if references is not None:
            _evaluate(report, references, labels, summary)
    return report


def run_plan(run_dir: Path | None, dataset: Path) -> DataPlan:
    """The plan a run was trained with: ``RUN/plans.json``, else its dataset's."""
    if run_dir is not None and (run_dir / PLAN_FILE).is_file():
        return read_plan(run_dir / PLAN_FILE)
    if (Path(dataset) / PLAN_FILE).is_file():
        return read_plan(Path(dataset) / PLAN_FILE)
    where = f"{run_dir} nor in " if run_dir is not None else ""
    raise DataError(f"no {PLAN_FILE} in {where}{dataset}: --images needs the preprocessing "
                    "plan, which hco prepare records since label maps; prepare the dataset "
                    "again and retrain, or predict its prepared split")


def _check_labels(run_dir: Path | None, dataset: PreparedDataset) -> None:
    """Refuse a dataset whose label map differs from the one the run trained with."""
    if run_dir is None or not (run_dir / PLAN_FILE).is_file():
        return
    trained = read_plan(run_dir / PLAN_FILE).labels
    if trained.values != dataset.labels.values or (
            trained.ignore_value != dataset.labels.ignore_value):
        raise DataError(f"dataset {dataset.root} has label values {list(dataset.labels.values)} "
                        f"but run {run_dir} trained on {list(trained.values)}")


def reference_labels(dataset: PreparedDataset, cases: list[str],
                     split: str | None) -> dict[str, Any]:
    """Each case's original label file; its prepared label where that is the same (neither
    cropped nor resampled: generated cases, or a source file no longer there)."""
    from hco_cli.evaluation.references import LabelSource

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


def _evaluate(report: PredictionReport, references: dict[str, Any], labels: LabelMap,
              target: Path) -> None:
    """Score the written predictions against the original labels; write summary.json."""
    from hco_cli.evaluation.evaluate import evaluate_cases

    predictions = {c.case: c.path for c in report.cases}
    summary = evaluate_cases(predictions, references, classes=labels.values[1:] or None,
                             ignore=labels.ignore_value)
    data = summary.to_json_dict()
    data.update(predictions=str(report.out), checkpoint=report.checkpoint, split=report.split,
                dataset=str(report.dataset), grid="original", lcc=report.window.lcc,
                stride=list(report.window.stride))
    write_json(target, data)
    report.summary = target
    report.mean_dice = {c: summary.mean[c]["dice"] for c in summary.mean}


def _locate_run(path: Path, which: Which | None) -> tuple[Path | None, str]:
    """The run folder (None for a loose .pt) and the checkpoint name used in output paths."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (expected a run folder or a .pt checkpoint)")
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise CheckpointError(f"{path} is not a run folder (no config.yaml)")
        return path, which or "best"
    if which is not None:
        raise ConfigError(f"--checkpoint {which} applies to run folders; {path} is a checkpoint "
                          "file already")
    parent = path.parent
    in_run = parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file()
    return (parent.parent if in_run else None), path.name.removesuffix(".pt")


def _open_dataset(given: Path | None, configured: Path) -> PreparedDataset:
    path = given or configured
    if not (Path(path) / "dataset.json").is_file():
        where = "" if given else " (the run's dataset; choose one with --data)"
        raise DataError(f"prepared dataset {path} not found{where}")
    return PreparedDataset(Path(path))


def _window(model: nn.Module, channels: int, num_classes: int, config: Any,
            options: PredictOptions, device: torch.device) -> Window:
    """Sliding-window settings; refuses data whose channels or classes the model lacks."""
    shape = model_channels(model)
    if shape is not None and shape != (channels, num_classes):
        raise DataError(
            f"the data has {channels} channel(s) and {num_classes} classes but the model "
            f"takes {shape[0]} and predicts {shape[1]}"
        )
    amp = options.amp if options.amp is not None else bool(config.amp and device.type == "cuda")
    return Window(patch_size=tuple(config.data.patch_size),
                  stride=options.stride or tuple(config.validation.stride),
                  num_classes=num_classes,
                  batch_size=options.batch_size or config.validation.batch_size,
                  amp=amp, lcc=options.lcc)


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
