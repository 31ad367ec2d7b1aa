"""Where ``hco evaluate`` reads reference labels, and how (see :mod:`hco_cli.evaluation.evaluate`).

A prepared dataset stores training indices; as a reference it gives its labels back in their
original values (its label map), so that they compare with predictions, which ``hco predict``
writes in original values. Its ignore label is then that of ``dataset.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hco_cli.data.dataset import Geometry, PreparedDataset
from hco_cli.data.io import case_id_from_path, read_volume, volume_suffix
from hco_cli.data.sources.generic import match_cases
from hco_cli.errors import DataError
from hco_cli.io_utils import is_glob

LA_FOLDER = "2018LA_Seg_Training Set"
LA_FILE = "mri_norm2.h5"


@dataclass(frozen=True)
class LabelSource:
    """Where the reference of one case is read from."""

    kind: Literal["volume", "h5", "prepared"]
    path: Path  # the file, or the prepared dataset's root
    case: str


@dataclass(frozen=True)
class References:
    """Label sources by case id, whether they form a pool (extra labels are fine), the
    foreground values a prepared dataset declares, and its ignore value."""

    sources: dict[str, LabelSource]
    pool: bool
    classes: list[int]
    ignore: int | None = None


def find_labels(folder: Path) -> References:
    """The references in ``folder``: label volumes, the LA h5 layout or a prepared dataset;
    or, where ``folder`` is a quoted pattern that names no path, the label volumes it
    matches (:func:`pattern_labels`)."""
    if not folder.exists() and is_glob(folder):
        return pattern_labels(str(folder))
    if not folder.is_dir():
        raise DataError(f"label folder not found: {folder}")
    if (folder / "dataset.json").is_file():
        dataset = PreparedDataset(folder)
        sources = {c: LabelSource("prepared", folder, c)
                   for c in dataset.case_ids() if dataset.has_label(c)}
        if not sources:
            raise DataError(f"{folder}: the prepared dataset has no labeled cases")
        return References(sources, True, list(dataset.labels.values[1:]),
                          dataset.labels.ignore_value)
    if (folder / LA_FOLDER).is_dir():
        folder = folder / LA_FOLDER
    found: dict[str, LabelSource] = {}
    paths: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / LA_FILE).is_file():
            add_unique(paths, path.name, path / LA_FILE)
            found[path.name] = LabelSource("h5", path / LA_FILE, path.name)
        elif path.is_file() and volume_suffix(path):
            case = case_id_from_path(path)
            add_unique(paths, case, path)
            found[case] = LabelSource("volume", path, case)
    if not found:
        raise DataError(
            f"{folder}: no label volumes (.nii.gz, .nrrd, .mha), no <CASE>/{LA_FILE} "
            "folders and no dataset.json"
        )
    return References(found, any(s.kind == "h5" for s in found.values()), [])


def pattern_labels(pattern: str) -> References:
    """The label volumes a glob matches (``'atlas/*/parcellation.nii.gz'``), with the case ids
    ``hco prepare generic --labels`` gives them: file names without their shared suffix, else
    the folders' names. A pool: labels without a prediction are skipped, as a prepared
    dataset's are."""
    matched = match_cases(pattern, base=None, option="labels")
    sources = {}
    for case, path in matched.items():
        if not (path.is_file() and volume_suffix(path)):
            raise DataError(f"labels {pattern!r} matches {path}, which is not a label volume "
                            "(.nii.gz, .nrrd, .mha)")
        sources[case] = LabelSource("volume", path, case)
    return References(sources, True, [])


def add_unique(found: dict[str, Path], case: str, path: Path) -> None:
    if case in found:
        raise DataError(f"case {case} appears twice: {found[case].name} and {path.name}")
    found[case] = path


def read_label(source: LabelSource) -> tuple[np.ndarray, Geometry | None]:
    """The label map (original values) and its geometry (None for h5 files)."""
    if source.kind == "volume":
        return read_volume(source.path)
    if source.kind == "prepared":
        dataset = PreparedDataset(source.path)
        label = dataset.labels.to_values(dataset.label(source.case, mmap=False))
        return label, dataset.geometry(source.case).prepared
    import h5py

    try:
        with h5py.File(source.path, "r") as handle:
            if "label" not in handle:
                raise DataError(f"{source.path}: no 'label' dataset (keys: {sorted(handle)})")
            return np.asarray(handle["label"][...]), None
    except OSError as exc:
        raise DataError(f"cannot read {source.path}: {exc}") from exc
