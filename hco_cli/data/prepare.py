"""``hco prepare`` as a library: one function per kind of source, each returning a summary.

Every function lists the source's cases, fixes the splits (:mod:`hco_cli.data.splits`),
then loads, checks, preprocesses and writes each case into a temporary folder that becomes
``out`` only when complete (:mod:`hco_cli.data.writer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hco_cli import __version__
from hco_cli.data.dataset import DatasetInfo, Splits
from hco_cli.data.preprocess import Norm, PreprocessPlan
from hco_cli.data.sources import SourceListing, read_list
from hco_cli.data.sources import la as la_source
from hco_cli.data.sources import pancreas as pancreas_source
from hco_cli.data.sources import synthetic as synthetic_source
from hco_cli.data.sources.generic import list_globs, list_nnunet
from hco_cli.data.splits import fold_grid, labeled_first_order, ordered_splits, pick_test
from hco_cli.data.writer import (
    CaseJob,
    CaseStats,
    Progress,
    dataset_output,
    run_cases,
    write_metadata,
)
from hco_cli.errors import ConfigError, DataError


class SplitOptions(BaseModel):
    """Split and fold-grid options shared by every source (see :mod:`hco_cli.data.splits`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labeled: int | None = Field(default=None, ge=1, description="None: the source's default")
    val: int = Field(default=0, ge=0)
    test: int | None = Field(default=None, ge=1, description="generic folders only")
    test_list: Path | None = Field(default=None, description="generic folders only")
    seed: int = 0
    folds_labeled: int = Field(default=0, ge=0)
    folds_unlabeled: int = Field(default=0, ge=0)
    fold_size: int | None = Field(default=None, ge=1, description="default: N labeled")


@dataclass
class PrepareSummary:
    """What was written: the dataset's metadata and per-case statistics."""

    out: Path
    info: DatasetInfo
    splits: Splits
    cases: list[CaseStats]
    skipped: list[str] = field(default_factory=list)
    dropped_empty_labels: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def shape_range(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-axis minimum and maximum of the prepared shapes."""
        shapes = np.array([c.shape for c in self.cases])
        return tuple(int(v) for v in shapes.min(0)), tuple(int(v) for v in shapes.max(0))

    def class_fractions(self) -> dict[str, float]:
        """Fraction of labeled voxels per class name, over every stored label."""
        width = max((len(c.label_counts) for c in self.cases), default=0)
        totals = np.zeros(width)
        for stats in self.cases:
            totals[: len(stats.label_counts)] += stats.label_counts
        grand = totals.sum() or 1.0
        return {name: float(totals[int(v)] / grand) if int(v) < width else 0.0
                for v, name in self.info.classes.items()}


def prepare_la(
    root: Path, out: Path, *, split: SplitOptions | None = None, allow_missing: bool = False,
    force: bool = False, workers: int = 1, progress: Progress | None = None,
) -> PrepareSummary:
    """LA in the UA-MT layout: labeled = first N (default 8) of train.list, no resampling."""
    split = split or SplitOptions()
    _refuse_generic_only(split, "la")
    listing = la_source.list_la(root, allow_missing=allow_missing)
    return _prepare(listing, PreprocessPlan(norm="none", classes=frozenset(la_source.CLASSES)),
                    out, split=split.model_copy(update={"labeled": split.labeled or 8}),
                    normalization="zscore", force=force, workers=workers, progress=progress)


def prepare_pancreas(
    root: Path, out: Path, *, split: SplitOptions | None = None, lists: Path | None = None,
    images: str | None = None, labels: str | None = None, allow_missing: bool = False,
    force: bool = False, workers: int = 1, progress: Progress | None = None,
) -> PrepareSummary:
    """Pancreas-CT: BCP h5 files with their lists, or raw scans (``images``/``labels`` globs)."""
    split = split or SplitOptions()
    root = Path(root)
    window = pancreas_source.CT_WINDOW
    if images is None and labels is None:
        _refuse_generic_only(split, "pancreas h5")
        listing = pancreas_source.list_pancreas_h5(root, lists=lists, allow_missing=allow_missing)
        labeled = split.labeled or pancreas_source.default_labeled(Path(lists) if lists else root)
        return _prepare(listing, PreprocessPlan(norm="none", classes=frozenset({0, 1})), out,
                        split=split.model_copy(update={"labeled": labeled}), normalization="ct",
                        ct_window=window, force=force, workers=workers, progress=progress)
    if images is None or labels is None:
        raise ConfigError("raw pancreas scans need both --images and --labels patterns")
    if allow_missing:
        raise ConfigError("--allow-missing applies to the h5 layout only")
    listing = list_globs(images=images, labels=labels, base=root)
    listing.classes, listing.modality = dict(pancreas_source.CLASSES), "CT"
    listing.source = f"pancreas-raw:{root.resolve()}"
    if lists is not None:
        listing = _apply_lists(listing, Path(lists))
        split = split.model_copy(update={"labeled": split.labeled or
                                         pancreas_source.default_labeled(Path(lists))})
    return _prepare(listing, pancreas_source.RAW_PLAN, out, split=split, normalization="ct",
                    ct_window=window, shuffle=lists is None, force=force, workers=workers,
                    progress=progress)


def prepare_generic(
    out: Path, *, root: Path | None = None, images: str | None = None,
    labels: str | None = None, unlabeled: str | None = None,
    classes: dict[int, str] | None = None, spacing: tuple[float, float, float] | None = None,
    norm: Norm | None = None, ct_window: tuple[float, float] = (-125.0, 275.0),
    crop_foreground: bool = False, crop_margin: int = 0, split: SplitOptions | None = None,
    force: bool = False, workers: int = 1, progress: Progress | None = None,
) -> PrepareSummary:
    """Image/label globs (relative to ``root`` if given) or an nnU-Net/MSD folder ``root``."""
    split = split or SplitOptions()
    if images is None:
        if labels is not None or unlabeled is not None or root is None:
            raise ConfigError("give --images and --labels patterns, or an nnU-Net/MSD folder")
        listing = list_nnunet(root)
    elif labels is None:
        raise ConfigError("--images needs --labels (label-less images go in --unlabeled)")
    else:
        listing = list_globs(images=images, labels=labels, unlabeled=unlabeled, base=root)
    if classes is not None:
        listing.classes = {0: "background", **classes}
    norm = norm or ("ct" if listing.modality == "CT" else "zscore")
    listing.modality = "CT" if norm == "ct" else listing.modality
    if crop_margin < 0:
        raise ConfigError(f"--crop-margin must be >= 0, got {crop_margin}")
    plan = PreprocessPlan(spacing=spacing, norm=norm, ct_window=ct_window,
                          crop_foreground=crop_foreground, crop_margin=crop_margin,
                          classes=frozenset(listing.classes) if listing.classes else None)
    return _prepare(listing, plan, out, split=split, normalization=norm,
                    ct_window=ct_window if norm == "ct" else None, shuffle=True, force=force,
                    workers=workers, progress=progress)


def prepare_synthetic(
    out: Path, *, labeled: int = 4, unlabeled: int = 8, val: int = 0, test: int = 4,
    classes: int = 2, shape: tuple[int, int, int] = synthetic_source.DEFAULT_SHAPE,
    seed: int = 0, folds_labeled: int = 0, folds_unlabeled: int = 0,
    fold_size: int | None = None, force: bool = False, workers: int = 1,
    progress: Progress | None = None,
) -> PrepareSummary:
    """Procedural phantoms (z-scored, 1 mm); unlabeled cases are stored without label."""
    listing = synthetic_source.list_synthetic(labeled=labeled, unlabeled=unlabeled, val=val,
                                              test=test, classes=classes, shape=shape, seed=seed)
    split = SplitOptions(labeled=labeled, seed=seed, folds_labeled=folds_labeled,
                         folds_unlabeled=folds_unlabeled, fold_size=fold_size)
    return _prepare(listing, PreprocessPlan(norm="zscore", classes=frozenset(listing.classes)),
                    out, split=split, normalization="zscore", force=force, workers=workers,
                    progress=progress)


def _prepare(
    listing: SourceListing, plan: PreprocessPlan, out: Path, *, split: SplitOptions,
    normalization: str, ct_window: tuple[float, float] | None = None, shuffle: bool = False,
    force: bool, workers: int, progress: Progress | None,
) -> PrepareSummary:
    start = time.perf_counter()
    splits = _main_splits(listing, split, shuffle=shuffle)
    unlabeled = set(splits.unlabeled)
    by_id = {c.case: c for c in listing.cases}
    order = [*splits.labeled, *splits.unlabeled, *splits.val, *splits.test]
    jobs = [CaseJob(by_id[case], allow_empty_label=case in unlabeled) for case in order]
    with dataset_output(out, force=force) as tmp:
        stats = run_cases(jobs, plan, tmp / "cases", workers=workers, progress=progress)
        with_label = {s.case for s in stats if s.has_label}
        splits.folds = fold_grid(splits, labeled_folds=split.folds_labeled,
                                 unlabeled_folds=split.folds_unlabeled, seed=split.seed,
                                 has_label=with_label, size=split.fold_size)
        info = DatasetInfo(
            name=Path(out).name, classes=_class_names(listing, stats),
            spacing=plan.spacing or _common_spacing(stats), modality=listing.modality,
            channels=int(max(len(c.images) for c in listing.cases) or 1),
            normalization=normalization, ct_window=ct_window, source=listing.source,
            hco_version=__version__,
        )
        write_metadata(tmp, info, splits)
    return PrepareSummary(out=Path(out), info=info, splits=splits, cases=stats,
                          skipped=list(listing.skipped),
                          dropped_empty_labels=[s.case for s in stats if s.dropped_empty_label],
                          seconds=time.perf_counter() - start)


def _main_splits(listing: SourceListing, split: SplitOptions, *, shuffle: bool) -> Splits:
    has_label = {c.case for c in listing.cases if c.has_label}
    known = {c.case for c in listing.cases}
    test = list(listing.test)
    if split.test_list is not None or split.test is not None:
        if test:
            raise ConfigError("this source already defines its test cases (imagesTs or lists); "
                              "--test and --test-list apply to folders without them")
        if split.test_list is not None and split.test is not None:
            raise ConfigError("give --test or --test-list, not both")
    if split.test_list is not None:
        test = read_list(split.test_list)
        for case in test:
            if case not in known:
                raise DataError(f"case {case}: named in {split.test_list} but not found")
            if case not in has_label:
                raise DataError(f"case {case}: test case without label ({split.test_list})")
    elif split.test is not None:
        test = pick_test(listing.train_order, split.test, seed=split.seed, has_label=has_label)
    train = [c for c in listing.train_order if c not in set(test)]
    if shuffle:
        train = labeled_first_order(train, seed=split.seed, has_label=has_label)
    labeled = split.labeled or sum(c in has_label for c in train)
    splits = ordered_splits(train, test, labeled=labeled, val=split.val, seed=split.seed,
                            has_label=has_label)
    splits.val = splits.val or list(listing.val)
    return splits


def _apply_lists(listing: SourceListing, lists: Path) -> SourceListing:
    labeled, unlabeled, test = pancreas_source.read_split_lists(lists)
    known = {c.case for c in listing.cases}
    for case in labeled + unlabeled + test:
        if case not in known:
            raise DataError(f"case {case}: named in the split lists in {lists} but not found")
    listing.train_order, listing.test = labeled + unlabeled, test
    named = set(labeled + unlabeled + test)
    listing.cases = [c for c in listing.cases if c.case in named]
    return listing


def _refuse_generic_only(split: SplitOptions, kind: str) -> None:
    if split.test is not None or split.test_list is not None:
        raise ConfigError(f"{kind}: the test split comes from the source's lists; "
                          "--test and --test-list apply to generic folders")


def _class_names(listing: SourceListing, stats: list[CaseStats]) -> dict[str, str]:
    if listing.classes:
        return {str(v): name for v, name in sorted(listing.classes.items())}
    values = sorted({v for s in stats for v, n in enumerate(s.label_counts) if n} | {0})
    return {str(v): "background" if v == 0 else f"class {v}" for v in values}


def _common_spacing(stats: list[CaseStats]) -> tuple[float, float, float]:
    """The spacing shared by all cases, or the per-axis median when they differ."""
    median = np.median(np.array([s.spacing for s in stats]), axis=0)
    return (float(median[0]), float(median[1]), float(median[2]))
