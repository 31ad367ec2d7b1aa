"""What ``hco predict`` reads: cases of a prepared split, or raw image files preprocessed alike.

Raw images go through the same checks, resampling, cropping and normalisation as ``hco
prepare`` (:func:`hco_cli.data.preprocess.preprocess_case`) with the plan the dataset was
prepared with (``plans.json``, copied into the run folder by ``hco train``), applied verbatim:
a raw scan and its prepared twin give the network the same input. Cropping follows the plan's
image rule (a label-based crop of training cases never applies: scans come without labels).

Spacing: a plan with a target spacing resamples every scan to it. A native-spacing plan takes
a scan as it is when each axis's spacing lies within :data:`~hco_cli.data.plan.SPACING_TOLERANCE`
of the range the training cases had; otherwise the scan is resampled to their median spacing
and the case's ``note`` says so (the prediction is still written on the scan's own grid).
Every case is loaded only when it is predicted.
"""

from __future__ import annotations

import functools
import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hco_cli.data.dataset import CaseGeometry, PreparedDataset, SplitName
from hco_cli.data.io import case_id_from_path, channel_tag, volume_suffix
from hco_cli.data.plan import SPACING_TOLERANCE, DataPlan
from hco_cli.data.preprocess import preprocess_case
from hco_cli.data.sources import SourceCase, check_case_id
from hco_cli.data.sources.generic import with_folders
from hco_cli.data.sources.load import load_case
from hco_cli.errors import DataError
from hco_cli.io_utils import is_glob

FORMATS = ".nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd"


@dataclass(frozen=True)
class LoadedCase:
    """A preprocessed image (C, X, Y, Z), its geometry, and what was done beyond the plan."""

    image: np.ndarray
    geometry: CaseGeometry
    note: str | None = None


@dataclass(frozen=True)
class InputCase:
    """A case to predict: its id and how to load its prepared image and geometry."""

    case: str
    load: Callable[[], LoadedCase]


def dataset_cases(dataset: PreparedDataset, split: SplitName, *,
                  fold: str | None = None) -> list[InputCase]:
    """The cases of ``split`` (with ``fold`` for labeled/unlabeled), in split order."""
    ids = dataset.split(split, fold=fold)
    if not ids:
        raise DataError(f"split {split!r} of {dataset.root} is empty; choose another --split")
    known = set(dataset.case_ids())
    missing = [case for case in ids if case not in known]
    if missing:
        raise DataError(f"case {missing[0]} of split {split!r} is missing from "
                        f"{dataset.cases_dir}")
    return [InputCase(case, functools.partial(_load_prepared, dataset, case)) for case in ids]


def image_cases(paths: Sequence[Path], plan: DataPlan) -> list[InputCase]:
    """Raw image files (or folders of them), one case per id (``_0000`` channel tags grouped)."""
    groups = group_images(paths, channels=plan.channels)
    return [
        InputCase(case, functools.partial(_load_raw, SourceCase(case, "volume", images=files),
                                          plan))
        for case, files in groups.items()
    ]


def group_images(paths: Sequence[Path], *, channels: int) -> dict[str, tuple[Path, ...]]:
    """Case id -> channel files (sorted by name, so ``_0000`` comes before ``_0001``)."""
    files: list[Path] = []
    for path in expand_globs(paths):
        if not path.exists():
            raise DataError(f"image path not found: {path}")
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and volume_suffix(p))
            if not found:
                raise DataError(f"{path}: no image files in this folder (use {FORMATS})")
            files.extend(found)
        elif not volume_suffix(path):
            raise DataError(f"{path}: unsupported file format (use {FORMATS})")
        else:
            files.append(path)
    # A trailing _dddd is a channel tag where the case's channel 0 (its _0000) is among the
    # files: 'p1_0000' and 'p1_0001' are two channels of p1, while 'scan_2023' and 'scan_2024'
    # (or AMOS's amos_0001, ...) are cases of their own.
    stems = {p: case_id_from_path(p) for p in files}
    firsts = {tag[0] for stem in stems.values() if (tag := channel_tag(stem)) and tag[1] == 0}
    named: dict[str, list[Path]] = {}
    for path, stem in stems.items():
        tag = channel_tag(stem)
        named.setdefault(tag[0] if tag and tag[0] in firsts else stem, []).append(path)
    groups: dict[str, list[Path]] = {}
    for case, members in named.items():
        # one file name in several folders ('atlas/*/srr.nii.gz'): each folder is a case,
        # named by the folder, as hco prepare names the cases of such a pattern
        several = len({p.parent for p in members}) > 1
        ids = folder_ids(members) if several else [case] * len(members)
        for path, key in zip(members, ids, strict=True):
            groups.setdefault(check_case_id(key, str(path)), []).append(path)
    for case, members in groups.items():
        if len(members) != channels:
            names = ", ".join(p.name for p in members)
            raise DataError(
                f"case {case}: {len(members)} image file(s) ({names}) but the dataset has "
                f"{channels} channel(s); name channels {case}_0000, {case}_0001, ..."
            )
    return {case: tuple(sorted(members, key=lambda p: p.name)) for case, members in groups.items()}


def folder_ids(paths: Sequence[Path]) -> list[str]:
    """Case ids of files named alike in several folders, as ``hco prepare`` gives them: the
    nearest folder's name, and while ids repeat, every id with its next folder up in front
    (``site1/caseA``, ``site2/caseA``, ``site1/caseB``: ``site1_caseA``, ...)."""
    folders = [list(reversed(Path(p).resolve().parent.parts)) for p in paths]
    return with_folders([f.pop(0) for f in folders], folders)


def expand_globs(paths: Sequence[Path]) -> list[Path]:
    """Paths as given; a quoted pattern (``'scans/*.nii.gz'``) that names no existing path
    becomes the paths it matches, sorted."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.exists() or not is_glob(path):
            out.append(path)
            continue
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise DataError(f"--images {path} matches no file")
        out.extend(Path(m) for m in matches)
    return out


def target_spacing(plan: DataPlan, spacing: Sequence[float]) -> tuple[float, float, float] | None:
    """The spacing a scan is resampled to: the plan's, else the median training spacing when
    the scan's lies outside the training range (by :data:`SPACING_TOLERANCE`), else None."""
    if plan.preprocess.spacing is not None:
        return plan.preprocess.spacing
    low = np.asarray(plan.spacing_min) / SPACING_TOLERANCE
    high = np.asarray(plan.spacing_max) * SPACING_TOLERANCE
    values = np.asarray(spacing, dtype=float)
    return None if bool(np.all((values >= low) & (values <= high))) else plan.spacing_median


def _load_prepared(dataset: PreparedDataset, case: str) -> LoadedCase:
    image = dataset.image(case)
    geometry = dataset.geometry(case)
    if tuple(image.shape[1:]) != tuple(geometry.prepared.shape):
        raise DataError(f"case {case}: image shape {tuple(image.shape[1:])} does not match "
                        f"its geometry {tuple(geometry.prepared.shape)} in {dataset.cases_dir}")
    return LoadedCase(image, geometry)


def _load_raw(source: SourceCase, plan: DataPlan) -> LoadedCase:
    raw = load_case(source)
    spacing = target_spacing(plan, raw.geometry.spacing)
    steps = plan.preprocess.model_copy(update={"spacing": spacing, "crop_train_by_label": False})
    prepared = preprocess_case(source, raw, steps, allow_empty_label=True)
    note = None
    if spacing is not None and plan.preprocess.spacing is None:
        note = (f"spacing {_mm(raw.geometry.spacing)} mm is outside the training range "
                f"{_mm(plan.spacing_min)} to {_mm(plan.spacing_max)} mm: resampled to "
                f"{_mm(spacing)} mm for the network")
    return LoadedCase(prepared.image, prepared.geometry, note)


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values)
