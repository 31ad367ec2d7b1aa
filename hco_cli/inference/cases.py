"""Predicting and writing cases one after another: the per-case half of ``hco predict``.

For each case: its probabilities (one sliding-window pass shared by every network of an
ensemble and every mirrored copy; the map stitched where :mod:`~hco_cli.inference.stitching`
decides), labels from them, the label map in original geometry and label values, and on
request the probabilities and an entropy map (:mod:`hco_cli.inference.probabilities`). The
peak GPU memory of each case is measured.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hco_cli.data.dataset import CaseGeometry
from hco_cli.data.io import write_volume
from hco_cli.data.labels import LabelMap
from hco_cli.errors import ConfigError
from hco_cli.inference.inputs import InputCase
from hco_cli.inference.probabilities import UNCERTAINTY_DIR, write_probabilities, write_uncertainty
from hco_cli.inference.resample import to_original_grid
from hco_cli.inference.sliding_window import Models, predict_volume
from hco_cli.inference.stitching import Stitch, map_bytes, peak_mib, reset_peak, stitch_device
from hco_cli.ops.components import keep_largest_per_class

Progress = Callable[[int, int, str], None]
"""Called after each case as ``progress(done, total, case_id)``."""
WindowProgress = Callable[[int, int, str], None]
"""Called after each batch of windows as ``progress(windows done, windows, case_id)``."""
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class Window:
    """Sliding-window and post-processing settings of one prediction."""

    patch_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    num_classes: int
    batch_size: int = 4
    amp: bool = False
    lcc: bool = False
    mirror_axes: tuple[int, ...] = ()
    stitch: Stitch = "auto"


@dataclass(frozen=True)
class Outputs:
    """What is written beside each label map."""

    probabilities: bool = False
    uncertainty: bool = False


@dataclass(frozen=True)
class CasePrediction:
    """One written prediction."""

    case: str
    path: Path
    prepared_shape: tuple[int, int, int]
    original_shape: tuple[int, int, int]
    seconds: float
    note: str | None = None
    stitched_on: str = "cpu"
    peak_gpu_mib: float | None = None
    # Seconds per stage where the pipelined path measured them (load, forward, labels, write,
    # score); the writing and scoring ran beside the next cases, not in ``seconds``.
    stages: dict[str, float] = field(default_factory=dict)


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


def case_probabilities(models: Models, image: np.ndarray, window: Window, *,
                       device: torch.device,
                       progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, str]:
    """Averaged probabilities (K, X, Y, Z) of one prepared (C, X, Y, Z) image, on the device
    they were stitched on, and that device's type. Under ``auto``, a GPU that runs out of
    memory stitching is asked once more with the map on the CPU."""
    needed = map_bytes(image.shape[1:], patch=window.patch_size, channels=image.shape[0],
                       num_classes=window.num_classes)
    target = stitch_device(window.stitch, device, needed=needed)
    tensor = torch.from_numpy(np.array(image, dtype=np.float32))  # mmaps are read-only
    try:
        return _volume(models, tensor, window, device, target, progress), target.type
    except torch.cuda.OutOfMemoryError:
        if target.type != "cuda":
            raise ConfigError("the GPU ran out of memory with the map stitched on the CPU: "
                              "lower --batch-size") from None
        if window.stitch == "gpu":
            raise ConfigError("the GPU ran out of memory stitching the map: use --stitch cpu "
                              "(or auto)") from None
    torch.cuda.empty_cache()  # outside the handler: the failed attempt's tensors are freed
    return _volume(models, tensor, window, device, _CPU, progress), "cpu"


def _volume(models: Models, image: Tensor, window: Window, device: torch.device,
            target: torch.device, progress: Callable[[int, int], None] | None) -> Tensor:
    return predict_volume(models, image, patch_size=window.patch_size, stride=window.stride,
                          num_classes=window.num_classes, batch_size=window.batch_size,
                          amp=window.amp, mirror_axes=window.mirror_axes, device=device,
                          stitch_device=target, progress=progress)


def labels_of(probs: Tensor, window: Window) -> np.ndarray:
    """Class indices (X, Y, Z) of the probabilities, post-processed as ``window`` says."""
    labels = labels_from_probabilities(probs).cpu().numpy().astype(label_dtype(window.num_classes))
    return keep_largest_per_class(labels, window.num_classes) if window.lcc else labels


@torch.inference_mode()
def device_labels(probs: Tensor, window: Window) -> np.ndarray:
    """:func:`labels_of`, with the labels and their largest components made where ``probs``
    lie: on a GPU only the final label map (one byte per voxel for up to 256 classes) travels
    to the host. The components are the same as on the CPU (see
    :mod:`hco_cli.ops.components`)."""
    labels = labels_from_probabilities(probs)
    if window.lcc:
        labels = keep_largest_per_class(labels, window.num_classes)
    small = window.num_classes <= 256
    host = labels.to(torch.uint8 if small else torch.int32).cpu().numpy()
    return host if small else host.astype(label_dtype(window.num_classes))


def write_prediction(labels: np.ndarray, geometry: CaseGeometry, path: Path,
                     label_map: LabelMap) -> None:
    """Write a prepared-grid map of class indices as NIfTI in the case's original geometry and
    original label values (atomically)."""
    original = to_original_grid(labels, prepared=geometry.prepared, original=geometry.original)
    write_volume(path, label_map.to_values(original), geometry.original,
                 header_of=geometry.source())


def predict_cases(
    models: Models, cases: Sequence[InputCase], out_dir: Path, window: Window, *,
    labels: LabelMap, device: torch.device, outputs: Outputs | None = None,
    progress: Progress | None = None, window_progress: WindowProgress | None = None,
) -> list[CasePrediction]:
    """Predict and write ``<case>.nii.gz`` (and what ``outputs`` asks) for every case."""
    outputs = outputs or Outputs()
    done: list[CasePrediction] = []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        reset_peak(device)
        loaded = case.load()
        step = None if window_progress is None else functools.partial(_named, window_progress,
                                                                       case.case)
        probs, where = case_probabilities(models, loaded.image, window, device=device,
                                          progress=step)
        path = Path(out_dir) / f"{case.case}.nii.gz"
        write_prediction(labels_of(probs, window), loaded.geometry, path, labels)
        if outputs.probabilities or outputs.uncertainty:
            array = probs.cpu().numpy()
            if outputs.probabilities:
                write_probabilities(Path(out_dir) / f"{case.case}.npz", array, loaded.geometry,
                                    labels)
            if outputs.uncertainty:
                write_uncertainty(Path(out_dir) / UNCERTAINTY_DIR / f"{case.case}.nii.gz",
                                  array, loaded.geometry)
        done.append(CasePrediction(case=case.case, path=path,
                                   prepared_shape=loaded.geometry.prepared.shape,
                                   original_shape=loaded.geometry.original.shape,
                                   seconds=time.perf_counter() - start, note=loaded.note,
                                   stitched_on=where, peak_gpu_mib=peak_mib(device)))
        if progress is not None:
            progress(i + 1, len(cases), case.case)
    return done


def _named(progress: WindowProgress, case: str, done: int, total: int) -> None:
    progress(done, total, case)
