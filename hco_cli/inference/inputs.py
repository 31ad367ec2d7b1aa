"""What ``hco predict`` reads: cases of a prepared split, or raw image files preprocessed alike.

Raw images go through the same checks, resampling and normalisation as ``hco prepare``
(:func:`hco_cli.data.preprocess.preprocess_case`) with the dataset's spacing and
normalisation from ``dataset.json``; they are not cropped (there is no label to crop around),
so the network sees the whole scan. Every case is loaded only when it is predicted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from hco_cli.data.dataset import CaseGeometry, DatasetInfo, PreparedDataset, SplitName
from hco_cli.data.io import case_id_from_path, volume_suffix
from hco_cli.data.preprocess import Norm, PreprocessPlan, preprocess_case
from hco_cli.data.sources import SourceCase, check_case_id, load_case
from hco_cli.errors import DataError

DEFAULT_CT_WINDOW = (-125.0, 275.0)
FORMATS = ".nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd"


@dataclass(frozen=True)
class InputCase:
    """A case to predict: its id and how to load its prepared image and geometry."""

    case: str
    load: Callable[[], tuple[np.ndarray, CaseGeometry]]


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


def image_cases(paths: Sequence[Path], info: DatasetInfo) -> list[InputCase]:
    """Raw image files (or folders of them), one case per id (``_0000`` channel tags grouped)."""
    plan = preprocess_plan(info)
    groups = group_images(paths, channels=info.channels)
    return [
        InputCase(case, functools.partial(_load_raw, SourceCase(case, "volume", images=files),
                                          plan))
        for case, files in groups.items()
    ]


def preprocess_plan(info: DatasetInfo) -> PreprocessPlan:
    """The resampling and normalisation that made the dataset, for new images."""
    if info.normalization not in get_args(Norm):
        raise DataError(f"dataset {info.name}: unknown normalization {info.normalization!r} "
                        f"(expected one of {', '.join(get_args(Norm))})")
    norm: Norm = info.normalization  # type: ignore[assignment]
    return PreprocessPlan(spacing=info.spacing, norm=norm,
                          ct_window=info.ct_window or DEFAULT_CT_WINDOW)


def group_images(paths: Sequence[Path], *, channels: int) -> dict[str, tuple[Path, ...]]:
    """Case id -> channel files (sorted by name, so ``_0000`` comes before ``_0001``)."""
    files: list[Path] = []
    for path in map(Path, paths):
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
    groups: dict[str, list[Path]] = {}
    for path in files:
        case = check_case_id(case_id_from_path(path), str(path))
        if path not in groups.setdefault(case, []):
            groups[case].append(path)
    for case, members in groups.items():
        if len(members) != channels:
            names = ", ".join(p.name for p in members)
            raise DataError(
                f"case {case}: {len(members)} image file(s) ({names}) but the dataset has "
                f"{channels} channel(s); name channels {case}_0000, {case}_0001, ..."
            )
    return {case: tuple(sorted(members, key=lambda p: p.name)) for case, members in groups.items()}


def _load_prepared(dataset: PreparedDataset, case: str) -> tuple[np.ndarray, CaseGeometry]:
    image = dataset.image(case)
    geometry = dataset.geometry(case)
    if tuple(image.shape[1:]) != tuple(geometry.prepared.shape):
        raise DataError(f"case {case}: image shape {tuple(image.shape[1:])} does not match "
                        f"its geometry {tuple(geometry.prepared.shape)} in {dataset.cases_dir}")
    return image, geometry


def _load_raw(source: SourceCase, plan: PreprocessPlan) -> tuple[np.ndarray, CaseGeometry]:
    prepared = preprocess_case(source, load_case(source), plan, allow_empty_label=True)
    return prepared.image, prepared.geometry
