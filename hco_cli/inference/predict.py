"""``hco predict``: segment whole volumes with a trained run and write them on the original grid.

Inputs are a split of a prepared dataset (by default the run's own, test split) or raw image
files, which are preprocessed as the run's dataset was (:mod:`hco_cli.inference.inputs`).
Each case goes through the sliding window of the run's validation (patch and stride from its
config), softmax averaged over windows, then labels as BCP's test code makes them (foreground
probability > 0.5 for two classes, argmax otherwise), optionally the largest connected
component per class, and finally back onto the case's original grid
(:mod:`hco_cli.inference.resample`). The output folder appears whole or not at all.
"""

from __future__ import annotations

import tempfile
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
from hco_cli.data.io import write_volume
from hco_cli.errors import CheckpointError, ConfigError, DataError
from hco_cli.inference.inputs import InputCase, dataset_cases, image_cases
from hco_cli.inference.postprocess import keep_largest_per_class
from hco_cli.inference.resample import to_original_grid
from hco_cli.inference.sliding_window import predict_volume
from hco_cli.io_utils import atomic_dir, write_json

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


@dataclass
class PredictionReport:
    """What ``hco predict`` did: where, with which settings, and per-case timings."""

    out: Path
    checkpoint: str
    device: str
    window: Window
    cases: list[CasePrediction]
    dataset: Path
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


def write_prediction(labels: np.ndarray, geometry: CaseGeometry, path: Path) -> None:
    """Write a prepared-grid label map as NIfTI in the case's original geometry (atomically)."""
    original = to_original_grid(labels, prepared=geometry.prepared, original=geometry.original)
    write_volume(path, original, geometry.original)


def predict_cases(
    model: nn.Module, cases: Sequence[InputCase], out_dir: Path, window: Window, *,
    device: torch.device, progress: Progress | None = None, prepared_dir: Path | None = None,
) -> list[CasePrediction]:
    """Predict and write ``<case>.nii.gz`` for every case into ``out_dir``.

    With ``prepared_dir``, each label map is also written there on the prepared grid
    (``<case>.nii``), to be scored against the prepared labels.
    """
    done: list[CasePrediction] = []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        image, geometry = case.load()
        labels = segment(model, image, window, device=device)
        path = Path(out_dir) / f"{case.case}.nii.gz"
        write_prediction(labels, geometry, path)
        if prepared_dir is not None:
            write_volume(Path(prepared_dir) / f"{case.case}.nii", labels, geometry.prepared)
        done.append(CasePrediction(case=case.case, path=path,
                                   prepared_shape=geometry.prepared.shape,
                                   original_shape=geometry.original.shape,
                                   seconds=time.perf_counter() - start))
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
    dataset = _open_dataset(options.data, config.data.path)
    window = _window(model, dataset, config, options, device)
    split = None if options.images else (options.split or "test")
    if split is None:
        cases = image_cases(options.images, dataset.info)
    else:
        # The run's fold names cases of the run's dataset only.
        fold = options.fold or (config.data.fold if options.data is None else None)
        cases = dataset_cases(dataset, split, fold=fold)
    out = options.out or (run_dir / "eval" / name / "preds" if run_dir else None)
    if out is None:
        raise ConfigError(f"{run} is not inside a run folder; choose where to write with --out")
    _check_output(out, force=options.force,
                  keep=[p for p in (run_dir, run, dataset.root, *options.images) if p])
    if options.evaluate:
        unlabeled = [c.case for c in cases if not dataset.has_label(c.case)]
        if unlabeled:
            raise DataError(f"--evaluate: case {unlabeled[0]} of split {split!r} has no label "
                            f"in {dataset.root}")
    with tempfile.TemporaryDirectory(prefix=".hco-predict-") as scratch:
        prepared_dir = Path(scratch) if options.evaluate else None
        with atomic_dir(out, force=options.force) as tmp:
            written = predict_cases(model, cases, tmp, window, device=device,
                                    progress=progress, prepared_dir=prepared_dir)
        report = PredictionReport(
            out=out, checkpoint=name, device=str(device), window=window, dataset=dataset.root,
            split=split, cases=[replace(c, path=out / c.path.name) for c in written])
        if prepared_dir is not None:
            eval_dir = run_dir / "eval" / name if run_dir else out.parent
            _evaluate(report, prepared_dir, eval_dir / "summary.json")
    return report


def _evaluate(report: PredictionReport, prepared_dir: Path, target: Path) -> None:
    """Score the prepared-grid predictions against the dataset's labels; write summary.json.

    Scoring happens on the prepared grid, where the labels live and where validation during
    training scored (BCP scores its cropped h5 volumes the same way).
    """
    from hco_cli.evaluation.evaluate import evaluate_folders

    summary = evaluate_folders(prepared_dir, report.dataset)
    data = summary.to_json_dict()
    data.update(predictions=str(report.out), checkpoint=report.checkpoint, split=report.split,
                dataset=str(report.dataset), grid="prepared", lcc=report.window.lcc,
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


def _window(model: nn.Module, dataset: PreparedDataset, config: Any, options: PredictOptions,
            device: torch.device) -> Window:
    """Sliding-window settings; refuses a dataset whose channels or classes the model lacks."""
    shape = model_channels(model)
    if shape is not None and shape != (dataset.info.channels, dataset.num_classes):
        raise DataError(
            f"dataset {dataset.root} has {dataset.info.channels} channel(s) and "
            f"{dataset.num_classes} classes but the model takes {shape[0]} and predicts "
            f"{shape[1]}"
        )
    amp = options.amp if options.amp is not None else bool(config.amp and device.type == "cuda")
    return Window(patch_size=tuple(config.data.patch_size),
                  stride=options.stride or tuple(config.validation.stride),
                  num_classes=dataset.num_classes,
                  batch_size=options.batch_size or config.validation.batch_size,
                  amp=amp, lcc=options.lcc)


def _check_output(out: Path, *, force: bool, keep: list[Path]) -> None:
    """Refuse an existing, non-empty ``out`` without ``force``, and any ``out`` holding inputs."""
    target = Path(out).resolve()
    for path in keep:
        inside = Path(path).resolve()
        if inside == target or target in inside.parents:
            raise ConfigError(f"--out {out} would replace {path}; choose another folder")
    if Path(out).is_file():
        raise ConfigError(f"--out {out} is a file; choose a folder")
    if Path(out).is_dir():
        if any(Path(out).iterdir()):
            if not force:
                raise DataError(f"output folder {out} already exists and is not empty; "
                                "use --force to replace it")
        else:
            Path(out).rmdir()
