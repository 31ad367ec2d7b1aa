"""What a source of cases looks like to ``hco prepare`` (loading one: ``load.py``).

A source module (``la``, ``pancreas``, ``generic``, ``synthetic``) only *lists* cases: it
returns a :class:`SourceListing` of picklable :class:`SourceCase` descriptions. Loading,
checking and preprocessing happen per case (possibly in worker processes) through
``load.load_case``, so that listing is cheap and errors name the case and file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hco_cli.data.dataset import Geometry
from hco_cli.errors import DataError

Reader = Literal["h5", "volume", "synthetic"]
SAFE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


@dataclass(frozen=True)
class SourceCase:
    """One case of a source: where its image (one path per channel) and label are."""

    case: str
    reader: Reader
    images: tuple[Path, ...] = ()
    label: Path | None = None
    # h5 sources store no geometry: the spacing they are known to have.
    spacing: tuple[float, float, float] | None = None
    # Generator parameters of synthetic cases (seed, index, shape, ...).
    params: dict[str, Any] = field(default_factory=dict)
    # Whether a label is present (synthetic cases have one unless they are unlabeled).
    has_label: bool = True


@dataclass
class SourceListing:
    """Cases of a source plus what the source says about splits and classes."""

    cases: list[SourceCase]
    source: str
    classes: dict[int, str]
    modality: str = "MR"
    # Training ids in the order the labeled subset is taken from (first N).
    train_order: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    # Validation ids fixed by the source (synthetic); otherwise --val draws them.
    val: list[str] = field(default_factory=list)
    # Ids named by the source but absent on disk (left out only with --allow-missing).
    skipped: list[str] = field(default_factory=list)
    # The label value that marks unannotated voxels (nnU-Net's "ignore"), if any.
    ignore_label: int | None = None
    # Preprocessing the files already had before hco (recorded in the plan).
    upstream: str | None = None


@dataclass
class RawCase:
    """A loaded case before preprocessing: image (C, X, Y, Z), optional label, geometry."""

    image: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    label_geometry: Geometry | None = None


def check_case_id(case: str, where: str) -> str:
    """Refuse ids that cannot be used as file names in ``cases/``."""
    if not case or case.startswith(".") or not set(case) <= SAFE_ID_CHARS:
        raise DataError(
            f"{where}: case id {case!r} is not usable as a file name "
            "(use letters, digits, '.', '_', '-', '+')"
        )
    return case


def check_unique(ids: list[str], where: str) -> None:
    """Raise on the first duplicate case id."""
    seen: set[str] = set()
    for case in ids:
        if case in seen:
            raise DataError(f"case {case}: duplicate case id in {where}")
        seen.add(case)


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split list {path}: {exc}") from exc
    return [line.strip() for line in lines if line.strip()]


def collect_h5_cases(
    files: list[tuple[str, Path]], *, spacing: tuple[float, float, float], named_in: str,
    allow_missing: bool,
) -> tuple[list[SourceCase], list[str]]:
    """h5 cases (id, file) that exist; a missing one is an error unless ``allow_missing``.

    Returns the cases found and the ids skipped.
    """
    cases, skipped = [], []
    for case, path in files:
        if path.is_file():
            cases.append(SourceCase(case=case, reader="h5", images=(path,), label=path,
                                    spacing=spacing))
        elif allow_missing:
            skipped.append(case)
        else:
            raise DataError(f"case {case}: file not found: {path} (named in {named_in}; use "
                            "--allow-missing to prepare only the cases present)")
    return cases, skipped
