"""The prepared dataset format, shared by every command after ``hco prepare``.

Layout of ``DATA_DIR/NAME``::

    dataset.json            DatasetInfo
    splits.json             Splits
    plans.json              DataPlan: the preprocessing to apply to new scans (and, after
                            ``hco plan``, the network plan)
    fingerprint.json        DatasetFingerprint: spacings, shapes, classes, intensities
    cases/<ID>.json         CaseGeometry
    cases/<ID>_image.npy    float32, shape (C, X, Y, Z), memory-mappable
    cases/<ID>_label.npy    training indices 0..K-1 (K: ignored voxels) as uint8 (uint16
                            above 255), shape (X, Y, Z); absent for unlabeled-only cases

Conventions:
- Arrays are indexed (x, y, z), as nibabel and the UA-MT h5 files index them; SimpleITK's
  (z, y, x) arrays are transposed on reading.
- Geometry uses ITK's physical convention (LPS): ``spacing`` per axis in mm, ``origin`` in mm,
  ``direction`` as a row-major 3x3 matrix whose columns are the axis directions.
- ``prepared`` is the geometry of the stored arrays; ``original`` is that of the source file,
  so that predictions can be written back onto the original scan.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hco_cli.data.labels import LabelMap, identity_map
from hco_cli.data.plan import DataPlan, read_plan
from hco_cli.errors import DataError
from hco_cli.json_models import read_json_model

FOLD_PATTERN = re.compile(r"^L(\d+)U(\d+)$")
SplitName = Literal["labeled", "unlabeled", "val", "test"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Geometry(_Model):
    """Voxel grid of one volume in physical space (ITK/LPS convention)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class CaseGeometry(_Model):
    """How a stored case relates to its source file."""

    case: str
    prepared: Geometry
    original: Geometry
    # Index box [start, stop) of the prepared grid's region inside the resampled original
    # volume, when the case was cropped; None when not cropped.
    crop: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    source_image: str | None = None
    source_label: str | None = None

    def source(self) -> Path | None:
        """The image file the case was read from (its first channel), where one was."""
        return Path(self.source_image) if self.source_image else None


class DatasetInfo(_Model):
    """``dataset.json``: what the prepared dataset is."""

    name: str
    classes: dict[str, str] = Field(description="training index (as a string) -> class name")
    # Original label value of each training index (None: datasets prepared before label maps,
    # whose indices are the values) and the value that is no class (stored as index K).
    label_values: list[int] | None = None
    ignore_label: int | None = None
    # The per-axis median of the prepared spacings (what the cases have, for reports).
    spacing: tuple[float, float, float]
    modality: str = "MR"
    channels: int = 1
    normalization: str = "zscore"
    # HU window mapped onto [0, 1] when ``normalization`` is "ct"; None otherwise.
    ct_window: tuple[float, float] | None = None
    source: str
    hco_version: str

    @model_validator(mode="after")
    def _indexed_classes(self) -> DatasetInfo:
        expected = [str(i) for i in range(len(self.label_values or []))]
        if self.label_values is not None and sorted(self.classes, key=int) != expected:
            raise ValueError("classes must be keyed 0..K-1, one per label value")
        return self

    def label_map(self) -> LabelMap:
        """Training index <-> original label value."""
        if self.label_values is None:
            return identity_map(self.classes)
        names = tuple(self.classes[str(i)] for i in range(len(self.label_values)))
        return LabelMap(values=tuple(self.label_values), names=names,
                        ignore_value=self.ignore_label)


class Folds(_Model):
    labeled: list[list[str]] = Field(default_factory=list)
    unlabeled: list[list[str]] = Field(default_factory=list)


class Splits(_Model):
    """``splits.json``: case ids per split, plus optional fold grids (``L{i}U{j}``)."""

    labeled: list[str]
    unlabeled: list[str] = Field(default_factory=list)
    val: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    folds: Folds = Field(default_factory=Folds)
    # Case id -> group (the patient), where several cases share one; every split holds whole
    # groups (see :mod:`hco_cli.data.splits`).
    groups: dict[str, str] = Field(default_factory=dict)

    def resolve(self, fold: str | None = None) -> dict[str, list[str]]:
        """Labeled/unlabeled/val/test ids, with ``fold`` (``L{i}U{j}``) replacing the first two."""
        out = {"labeled": list(self.labeled), "unlabeled": list(self.unlabeled),
               "val": list(self.val), "test": list(self.test)}
        if fold is None:
            return out
        match = FOLD_PATTERN.match(fold)
        if match is None:
            raise DataError(f"fold {fold!r} is not of the form L<i>U<j>, e.g. L0U1")
        i, j = int(match.group(1)), int(match.group(2))
        nl, nu = len(self.folds.labeled), len(self.folds.unlabeled)
        if not nl and not nu:
            raise DataError(
                f"fold {fold} does not exist: this dataset was prepared without a fold grid; "
                "leave the fold out (hco train: --fold none, data.fold: null) for its "
                "labeled/unlabeled split, or prepare it with --folds-labeled/--folds-unlabeled"
            )
        if i >= nl or j >= nu:
            raise DataError(
                f"fold {fold} does not exist: this dataset has {nl} labeled and {nu} unlabeled "
                "folds (prepare with --folds-labeled/--folds-unlabeled)"
            )
        out["labeled"] = list(self.folds.labeled[i])
        out["unlabeled"] = list(self.folds.unlabeled[j])
        return out


class PreparedDataset:
    """Read access to a prepared dataset folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / "dataset.json").is_file():
            raise DataError(
                f"{self.root} is not a prepared dataset (no dataset.json); run `hco prepare` first"
            )
        self.info = read_json_model(DatasetInfo, self.root / "dataset.json")
        self.splits = read_json_model(Splits, self.root / "splits.json")
        try:
            self.labels = self.info.label_map()
        except ValueError as exc:
            raise DataError(f"{self.root / 'dataset.json'}: invalid label map: "
                            f"{str(exc).splitlines()[-1].strip()}") from None

    @property
    def cases_dir(self) -> Path:
        return self.root / "cases"

    @property
    def num_classes(self) -> int:
        """Number of output channels: the number of training indices (ignore excluded)."""
        return self.labels.num_classes

    @property
    def ignore_index(self) -> int | None:
        """Stored index of ignored voxels (None: every voxel is a class)."""
        return self.labels.ignore_index

    def plan(self) -> DataPlan:
        """The preprocessing plan of ``plans.json`` (datasets prepared since label maps)."""
        return read_plan(self.root)

    def case_ids(self) -> list[str]:
        return sorted(p.name[: -len(".json")] for p in self.cases_dir.glob("*.json"))

    def has_label(self, case: str) -> bool:
        return (self.cases_dir / f"{case}_label.npy").is_file()

    def image(self, case: str, *, mmap: bool = True) -> np.ndarray:
        """Image of ``case`` as (C, X, Y, Z) float32."""
        return self._array(case, "image", mmap)

    def label(self, case: str, *, mmap: bool = True) -> np.ndarray:
        """Label of ``case`` as (X, Y, Z) integers."""
        return self._array(case, "label", mmap)

    def geometry(self, case: str) -> CaseGeometry:
        return read_json_model(CaseGeometry, self.cases_dir / f"{case}.json")

    def split(self, name: SplitName, *, fold: str | None = None) -> list[str]:
        return self.splits.resolve(fold)[name]

    def _array(self, case: str, kind: str, mmap: bool) -> np.ndarray:
        path = self.cases_dir / f"{case}_{kind}.npy"
        if not path.is_file():
            raise DataError(f"case {case}: {kind} array missing ({path})")
        try:
            return np.load(path, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise DataError(f"case {case}: cannot read {path}: {exc}") from exc

