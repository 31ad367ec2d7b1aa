"""The plan: everything that turns a raw scan into network input, written once by ``prepare``.

``hco prepare`` writes ``plans.json`` beside ``dataset.json``; ``hco train`` copies it into the
run folder (adding the patch size), and ``hco predict --images`` applies it verbatim, so new
scans are preprocessed exactly as the training cases were, with no prepared dataset at hand.

What it fixes:

- orientation: arrays keep the axis order and direction of their files (never reoriented);
  predictions are written back in each scan's own geometry;
- target spacing: ``preprocess.spacing``, or none (native spacing, no resampling). A native
  plan records the range of the prepared spacings: a scan outside it by more than
  :data:`SPACING_TOLERANCE` is resampled to their median for prediction, and the report
  says so (:mod:`hco_cli.inference.inputs`);
- crop rule (:mod:`hco_cli.data.preprocess`): from the image only (``nonzero`` or ``otsu``);
  training cases with labels may be cropped around their label when asked by name (never
  val or test cases, never a scan at prediction);
- intensity normalisation: ``zscore`` uses each image's own mean and standard deviation (the
  statistics are per image, recomputed on every scan), ``ct`` a fixed HU window, ``none``
  nothing (``upstream`` then says what was done before hco, e.g. UA-MT's z-scoring);
- label map (:mod:`hco_cli.data.labels`) and ignore value;
- patch size: empty in a dataset's plan, the run's ``data.patch_size`` in a run's copy;
- network plan (``network``, written by ``hco plan``, :mod:`hco_cli.planning`): target
  spacing, patch size, per-stage strides and kernels, batch sizes and the memory estimate
  they were chosen with; ``hco train --plan auto`` applies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hco_cli.data.labels import LabelMap
from hco_cli.io_utils import write_text
from hco_cli.json_models import read_json_model

PLAN_FILE = "plans.json"
Norm = Literal["zscore", "ct", "none"]
CropRule = Literal["none", "nonzero", "otsu"]
Spacing = tuple[float, float, float]
# The HU window of ``--norm ct`` where none is given: the abdominal soft-tissue window of the
# pancreas protocols (BCP/CoraNet).
CT_WINDOW = (-125.0, 275.0)
# A native-spacing plan takes scans whose spacing lies within this factor of the prepared
# range as they are; others are resampled to the prepared median spacing.
SPACING_TOLERANCE = 1.25


def spacing_problem(spacing: Sequence[float]) -> str | None:
    """Why a target spacing cannot be resampled to (None where it can): every value must be
    finite and above 0."""
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        return "spacings must be finite numbers above 0"
    return None


def ct_window_problem(window: Sequence[float]) -> str | None:
    """Why a CT window cannot be mapped onto [0, 1] (None where it can): both bounds finite
    and the low one first (an empty or reversed window makes every voxel NaN or constant)."""
    if not all(math.isfinite(v) for v in window):
        return "both bounds must be finite numbers"
    if window[0] >= window[1]:
        return "the low bound must come first and be below the high one (e.g. -125,275)"
    return None


class PreprocessPlan(BaseModel):
    """How every case of a dataset is transformed (the same for all cases)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spacing: Spacing | None = Field(default=None, description="None: native, no resampling")
    norm: Norm = "zscore"
    ct_window: tuple[float, float] = CT_WINDOW
    crop: CropRule = "none"
    # Training cases with labels (labeled and unlabeled splits: fold grids draw labeled folds
    # from both) cropped around their label; val, test and label-less cases keep the image
    # rule ``crop``. CoraNet's pancreas protocol, only when asked by name.
    crop_train_by_label: bool = False
    crop_margin: int = Field(default=0, ge=0)
    crop_min_size: tuple[int, int, int] | None = None
    # The label map; None while the values are still to be discovered from the cases.
    labels: LabelMap | None = None
    ignore_label: int | None = Field(default=None, ge=1)

    @field_validator("spacing")
    @classmethod
    def _usable_spacing(cls, spacing: Spacing | None) -> Spacing | None:
        problem = spacing_problem(spacing) if spacing is not None else None
        if problem:
            raise ValueError(problem)
        return spacing

    @field_validator("ct_window")
    @classmethod
    def _usable_window(cls, window: tuple[float, float]) -> tuple[float, float]:
        problem = ct_window_problem(window)
        if problem:
            raise ValueError(problem)
        return window

    @model_validator(mode="after")
    def _same_ignore(self) -> PreprocessPlan:
        if self.labels is not None and self.labels.ignore_value != self.ignore_label:
            raise ValueError("labels.ignore_value and ignore_label differ")
        return self


class NetworkPlan(BaseModel):
    """What ``hco plan`` chose for training on this dataset (see :mod:`hco_cli.planning`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    framework: str
    preset: str | None = Field(default=None, description="paper preset that pinned the patch")
    target_spacing: Spacing = Field(description="planned from the source spacings")
    spacing: Spacing = Field(description="median spacing of the stored training cases")
    median_shape: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    strides: list[tuple[int, int, int]]
    kernels: list[tuple[int, int, int]]
    n_filters: int = Field(ge=1)
    labeled_batch_size: int = Field(ge=1)
    unlabeled_batch_size: int = Field(ge=0)
    umix_blocks: tuple[int, int, int]
    amp: bool
    memory_target_bytes: int = Field(ge=0)
    memory_estimate_bytes: int = Field(ge=0, description="one iteration, dataset excluded")
    dataset_bytes: int = Field(ge=0, description="training cases resident on the GPU")


class DataPlan(BaseModel):
    """``plans.json``: the preprocessing plan plus what prediction needs to check scans."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    orientation: Literal["as-stored"] = "as-stored"
    preprocess: PreprocessPlan
    channels: int = Field(ge=1)
    spacing_min: Spacing
    spacing_max: Spacing
    spacing_median: Spacing
    upstream: str | None = Field(default=None, description="preprocessing done before hco")
    patch_size: tuple[int, int, int] | None = None
    source: str
    network: NetworkPlan | None = None

    @model_validator(mode="after")
    def _labels_fixed(self) -> DataPlan:
        if self.preprocess.labels is None:
            raise ValueError("preprocess.labels: the label map is required")
        return self

    @property
    def labels(self) -> LabelMap:
        assert self.preprocess.labels is not None  # checked by the validator
        return self.preprocess.labels


def write_plan(folder: Path, plan: DataPlan) -> Path:
    """Write ``folder/plans.json`` atomically; return its path."""
    path = Path(folder) / PLAN_FILE
    write_text(path, plan.model_dump_json(indent=2) + "\n")
    return path


def read_plan(path: Path) -> DataPlan:
    """Read a ``plans.json`` file (or the one in a folder)."""
    path = Path(path)
    path = path / PLAN_FILE if path.is_dir() else path
    return read_json_model(DataPlan, path, missing="prepare the dataset again with this hco "
                           "version to record its preprocessing plan")
