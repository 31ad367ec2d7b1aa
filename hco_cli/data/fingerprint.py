"""The dataset fingerprint: what the planner needs to know about the prepared cases.

``hco prepare`` writes ``fingerprint.json`` beside ``plans.json`` (nnU-Net's
``dataset_fingerprint.json``): per case the spacing of its source file, the spacing and shape
it was stored with (after resampling and cropping), the voxel count of each class and the
intensity statistics of its foreground (labeled voxels of a class other than background, the
ignore label excluded). Datasets prepared before fingerprints existed get theirs computed
from the stored cases on first use (:func:`load_fingerprint`).

Intensities are those of the stored images, after the plan's normalisation: what the network
sees. The dataset statistics pool up to :data:`SAMPLES_PER_CASE` evenly spaced foreground
voxels of every case, as nnU-Net does (10,000 a case), so large cases do not dominate.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hco_cli.data.dataset import CaseGeometry, PreparedDataset
from hco_cli.errors import DataError
from hco_cli.io_utils import write_text
from hco_cli.json_models import read_json_model

FINGERPRINT_FILE = "fingerprint.json"
SAMPLES_PER_CASE = 10_000
Spacing = tuple[float, float, float]
Shape = tuple[int, int, int]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntensityStats(_Model):
    """Statistics of one channel over a set of voxels."""

    voxels: int = Field(ge=0)
    mean: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


class CaseFingerprint(_Model):
    """One stored case as the planner sees it."""

    case: str
    original_spacing: Spacing
    spacing: Spacing
    shape: Shape
    has_label: bool
    class_voxels: list[int] = Field(default_factory=list, description="per training index")
    foreground: list[IntensityStats] | None = Field(default=None, description="per channel")


class DatasetFingerprint(_Model):
    """``fingerprint.json``: every case plus the pooled foreground intensities."""

    format: Literal[1] = 1
    cases: list[CaseFingerprint]
    foreground: list[IntensityStats] | None = None

    def select(self, cases: Iterable[str]) -> list[CaseFingerprint]:
        """The fingerprints of ``cases`` (in that order); unknown ids are an error."""
        by_id = {c.case: c for c in self.cases}
        missing = [c for c in cases if c not in by_id]
        if missing:
            raise DataError(f"case {missing[0]}: not in the dataset fingerprint; prepare the "
                            "dataset again")
        return [by_id[c] for c in cases]

    def class_fractions(self, num_classes: int) -> list[float]:
        """Fraction of labeled voxels per class over every case with a label."""
        totals = np.zeros(num_classes)
        for case in self.cases:
            counts = case.class_voxels[:num_classes]
            totals[: len(counts)] += counts
        grand = totals.sum() or 1.0
        return [float(v / grand) for v in totals]


def intensity_stats(values: np.ndarray) -> IntensityStats:
    """Statistics of a 1-D array of voxel values (empty: zeros)."""
    if values.size == 0:
        return IntensityStats(voxels=0, mean=0.0, std=0.0, min=0.0, max=0.0,
                              percentile_00_5=0.0, percentile_99_5=0.0)
    values = values.astype(np.float64, copy=False)
    low, high = np.percentile(values, [0.5, 99.5])
    return IntensityStats(voxels=int(values.size), mean=float(values.mean()),
                          std=float(values.std()), min=float(values.min()),
                          max=float(values.max()), percentile_00_5=float(low),
                          percentile_99_5=float(high))


def _evenly(values: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` evenly spaced entries (deterministic, unlike random sampling)."""
    if values.size <= count:
        return values
    return values[np.linspace(0, values.size - 1, count).astype(np.int64)]


def case_fingerprint(case: str, image: np.ndarray, label: np.ndarray | None,
                     geometry: CaseGeometry, *, num_classes: int,
                     samples: list[list[np.ndarray]] | None = None) -> CaseFingerprint:
    """Fingerprint of one stored case; appends its foreground samples per channel to
    ``samples`` when given. Label indices >= ``num_classes`` (the ignore index) are no class."""
    counts: list[int] = []
    foreground = None
    if label is not None:
        label = np.asarray(label)
        counts = np.bincount(label.ravel(), minlength=num_classes)[:num_classes].tolist()
        mask = (label > 0) & (label < num_classes)
        foreground = []
        for channel in range(image.shape[0]):
            values = np.asarray(image[channel])[mask]
            foreground.append(intensity_stats(values))
            if samples is not None:
                samples[channel].append(_evenly(values, SAMPLES_PER_CASE))
    return CaseFingerprint(
        case=case, original_spacing=geometry.original.spacing,
        spacing=geometry.prepared.spacing, shape=geometry.prepared.shape,
        has_label=label is not None, class_voxels=counts, foreground=foreground)


def fingerprint_dataset(dataset: PreparedDataset) -> DatasetFingerprint:
    """Fingerprint every stored case of ``dataset`` (reads each array once, memory-mapped)."""
    cases = dataset.case_ids()
    channels = dataset.info.channels
    samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
    out = []
    for case in cases:
        label = dataset.label(case) if dataset.has_label(case) else None
        out.append(case_fingerprint(case, dataset.image(case), label, dataset.geometry(case),
                                    num_classes=dataset.num_classes, samples=samples))
    pooled = None
    if any(case.has_label for case in out):
        pooled = [intensity_stats(np.concatenate(s) if s else np.zeros(0)) for s in samples]
    return DatasetFingerprint(cases=out, foreground=pooled)


def write_fingerprint(folder: Path, fingerprint: DatasetFingerprint) -> Path:
    """Write ``folder/fingerprint.json`` atomically; return its path."""
    path = Path(folder) / FINGERPRINT_FILE
    write_text(path, fingerprint.model_dump_json(indent=1) + "\n")
    return path


def read_fingerprint(path: Path) -> DatasetFingerprint:
    """Read a ``fingerprint.json`` file (or the one in a folder)."""
    path = Path(path)
    path = path / FINGERPRINT_FILE if path.is_dir() else path
    return read_json_model(DatasetFingerprint, path)


def load_fingerprint(dataset: PreparedDataset) -> DatasetFingerprint:
    """The stored fingerprint, or one computed now for datasets prepared before them."""
    path = dataset.root / FINGERPRINT_FILE
    return read_fingerprint(path) if path.is_file() else fingerprint_dataset(dataset)
