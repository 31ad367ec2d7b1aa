"""``hco prepare`` as a library: one function per kind of source, each returning a summary.

Every function lists the source's cases, fixes the splits (:mod:`hco_cli.data.splits`),
then loads, checks, preprocesses and writes each case into a temporary folder that becomes
``out`` only when complete (:mod:`hco_cli.data.writer`), with ``dataset.json``,
``splits.json``, the plan that new scans get at prediction (``plans.json``,
:mod:`hco_cli.data.plan`) and the fingerprint that ``hco plan`` reads (``fingerprint.json``,
:mod:`hco_cli.data.fingerprint`). Label values that no source declares are discovered from the cases
and mapped to training indices once all are written (:mod:`hco_cli.data.labels`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hco_cli import __version__
from hco_cli.data.dataset import DatasetInfo, PreparedDataset, Splits
from hco_cli.data.fingerprint import fingerprint_dataset, write_fingerprint
from hco_cli.data.grid import SPACING_RTOL
from hco_cli.data.labels import LabelMap, build_label_map
from hco_cli.data.plan import (
    CT_WINDOW,
    CropRule,
    DataPlan,
    Norm,
    PreprocessPlan,
    ct_window_problem,
    spacing_problem,
)
from hco_cli.data.sources import SourceListing, read_list
from hco_cli.data.sources import la as la_source
from hco_cli.data.sources import pancreas as pancreas_source
from hco_cli.data.sources import synthetic as synthetic_source
from hco_cli.data.sources.generic import list_globs, list_nnunet
from hco_cli.data.splits import (
    DEFAULT_GROUP,
    Groups,
    case_groups,
    fold_grid,
    labeled_capacity,
    labeled_first_order,
    ordered_splits,
    pick_test,
)
from hco_cli.data.writer import (
    CaseJob,
    CaseStats,
    Progress,
    dataset_output,
    remap_labels,
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
    group: str | None = Field(default=None, description="generic folders only; default: "
                              "splits.DEFAULT_GROUP")


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

    def spacings_differ(self) -> bool:
        """Whether the stored cases differ in spacing (kept native), so that the dataset's
        spacing is their median rather than every case's."""
        spacings = np.array([c.spacing for c in self.cases], dtype=float)
        return len(spacings) > 1 and not np.allclose(spacings, spacings[0],
                                                     rtol=SPACING_RTOL, atol=0.0)

    def class_fractions(self) -> dict[str, float]:
        """Fraction of labeled voxels per class (named, with its value where that differs
        from its index), over every stored label; ignored voxels are not counted."""
        labels = self.info.label_map()
        width = max((len(c.label_counts) for c in self.cases), default=0)
        totals = np.zeros(max(width, labels.num_classes))
        for stats in self.cases:
            totals[: len(stats.label_counts)] += stats.label_counts
        totals = totals[: labels.num_classes]
        grand = totals.sum() or 1.0
        out = {}
        for index, (value, name) in enumerate(zip(labels.values, labels.names, strict=True)):
            out[name if value == index else f"{name} (value {value})"] = totals[index] / grand
        return out


def prepare_la(
    root: Path, out: Path, *, split: SplitOptions | None = None, allow_missing: bool = False,
    force: bool = False, workers: int = 1, progress: Progress | None = None,
) -> PrepareSummary:
    """LA in the UA-MT layout: labeled = first N (default 8) of train.list, no resampling."""
    split = split or SplitOptions()
    _refuse_generic_only(split, "la")
    listing = la_source.list_la(root, allow_missing=allow_missing)
    listing.upstream = la_source.UPSTREAM
    return _prepare(listing, PreprocessPlan(norm="none", labels=_declared(listing)), out,
                    split=split.model_copy(update={"labeled": split.labeled or 8}),
                    force=force, workers=workers, progress=progress)


def prepare_pancreas(
    root: Path, out: Path, *, split: SplitOptions | None = None, lists: Path | None = None,
    images: str | None = None, labels: str | None = None, allow_missing: bool = False,
    force: bool = False, workers: int = 1, progress: Progress | None = None,
) -> PrepareSummary:
    """Pancreas-CT: BCP h5 files with their lists, or raw scans (``images``/``labels`` globs)."""
    split = split or SplitOptions()
    root = Path(root)
    if images is None and labels is None:
        _refuse_generic_only(split, "pancreas h5")
        listing = pancreas_source.list_pancreas_h5(root, lists=lists, allow_missing=allow_missing)
        listing.upstream = pancreas_source.UPSTREAM
        labeled = split.labeled or pancreas_source.default_labeled(Path(lists) if lists else root)
        return _prepare(listing, PreprocessPlan(norm="none", labels=_declared(listing)), out,
                        split=split.model_copy(update={"labeled": labeled}), force=force,
                        workers=workers, progress=progress)
    if images is None or labels is None:
        raise ConfigError("raw pancreas scans need both --images and --labels patterns")
    if allow_missing:
        raise ConfigError("--allow-missing applies to the h5 layout only")
    if split.group is not None:
        raise ConfigError("--group applies to generic folders")
    listing = list_globs(images=images, labels=labels, base=root, by_wildcard=True)
    listing.classes, listing.modality = dict(pancreas_source.CLASSES), "CT"
    listing.source = f"pancreas-raw:{root.resolve()}"
    if lists is not None:
        listing = _apply_lists(listing, Path(lists))
        split = split.model_copy(update={"labeled": split.labeled or
                                         pancreas_source.default_labeled(Path(lists))})
    return _prepare(listing, pancreas_source.RAW_PLAN, out, split=split, shuffle=lists is None,
                    force=force, workers=workers, progress=progress)


def prepare_generic(
    out: Path, *, root: Path | None = None, images: str | None = None,
    labels: str | None = None, unlabeled: str | None = None,
    classes: dict[int, str] | None = None, ignore_label: int | None = None,
    spacing: tuple[float, float, float] | None = None, norm: Norm | None = None,
    ct_window: tuple[float, float] | None = None, crop: CropRule = "none",
    crop_train_by_label: bool = False, crop_margin: int = 0,
    split: SplitOptions | None = None, force: bool = False, workers: int = 1,
    progress: Progress | None = None,
) -> PrepareSummary:
    """Image/label globs (relative to ``root`` if given) or an nnU-Net/MSD folder ``root``.

    ``classes`` (value -> name) fixes the label values; otherwise they are discovered.
    ``ignore_label`` marks unannotated voxels (no class; skipped by losses and metrics).
    ``ct_window`` (default -125..275 HU) applies to CT normalisation only, ``crop_margin`` to a
    crop only: given where nothing uses them, they are refused rather than recorded unused.
    """
    split = split or SplitOptions()
    _check_generic_options(spacing=spacing, ct_window=ct_window, crop=crop,
                           crop_train_by_label=crop_train_by_label, crop_margin=crop_margin)
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
    if ignore_label is not None:
        if listing.ignore_label not in (None, ignore_label):
            raise ConfigError(f"--ignore-label {ignore_label}: dataset.json names "
                              f"{listing.ignore_label} as its ignore label")
        listing.ignore_label = ignore_label
    norm = norm or ("ct" if listing.modality == "CT" else "zscore")
    listing.modality = "CT" if norm == "ct" else listing.modality
    if ct_window is not None and norm != "ct":
        raise ConfigError(f"--ct-window applies to --norm ct only; this dataset is normalised "
                          f"with {norm} (add --norm ct, or leave --ct-window out)")
    plan = PreprocessPlan(spacing=spacing, norm=norm, ct_window=ct_window or CT_WINDOW,
                          crop=crop, crop_train_by_label=crop_train_by_label,
                          crop_margin=crop_margin,
                          labels=_declared(listing) if listing.classes else None,
                          ignore_label=listing.ignore_label)
    group = split.group if split.group is not None else DEFAULT_GROUP
    return _prepare(listing, plan, out, split=split, shuffle=True, group=group, force=force,
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
    return _prepare(listing, PreprocessPlan(norm="zscore", labels=_declared(listing)), out,
                    split=split, force=force, workers=workers, progress=progress)


def _check_generic_options(
    *, spacing: tuple[float, float, float] | None, ct_window: tuple[float, float] | None,
    crop: CropRule, crop_train_by_label: bool, crop_margin: int,
) -> None:
    """Refuse numbers that would spoil every case (NaN spacing, an empty or reversed CT
    window) and a crop margin with no crop to widen, before any case is read."""
    if spacing is not None and (problem := spacing_problem(spacing)):
        raise ConfigError(f"--spacing {_numbers_text(spacing)}: {problem}")
    if ct_window is not None and (problem := ct_window_problem(ct_window)):
        raise ConfigError(f"--ct-window {_numbers_text(ct_window)}: {problem}")
    if crop_margin < 0:
        raise ConfigError(f"--crop-margin must be >= 0, got {crop_margin}")
    if crop_margin and crop == "none" and not crop_train_by_label:
        raise ConfigError(f"--crop-margin {crop_margin} needs --crop (or --crop-train-by-label): "
                          "without a crop there is no box to widen")


def _numbers_text(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _prepare(
    listing: SourceListing, plan: PreprocessPlan, out: Path, *, split: SplitOptions,
    shuffle: bool = False, group: str | None = None, force: bool, workers: int,
    progress: Progress | None,
) -> PrepareSummary:
    start = time.perf_counter()
    groups = case_groups([c.case for c in listing.cases], group) if group else None
    splits = _main_splits(listing, split, shuffle=shuffle, groups=groups)
    unlabeled = set(splits.unlabeled)
    training = set(splits.labeled) | unlabeled
    by_id = {c.case: c for c in listing.cases}
    order = [*splits.labeled, *splits.unlabeled, *splits.val, *splits.test]
    jobs = [CaseJob(by_id[case], allow_empty_label=case in unlabeled,
                    crop_by_label=plan.crop_train_by_label and case in training)
            for case in order]
    with dataset_output(out, force=force) as tmp:
        stats = run_cases(jobs, plan, tmp / "cases", workers=workers, progress=progress)
        labels = plan.labels or _discovered(stats, plan.ignore_label)
        if plan.labels is None and not labels.is_identity:
            remap_labels(tmp / "cases", stats, labels)
        with_label = {s.case for s in stats if s.has_label}
        splits.folds = fold_grid(splits, labeled_folds=split.folds_labeled,
                                 unlabeled_folds=split.folds_unlabeled, seed=split.seed,
                                 has_label=with_label, size=split.fold_size, groups=groups)
        if groups and any(k != c for c, k in groups.items()):
            splits.groups = {c: groups[c] for c in order}
        spacings = np.array([s.spacing for s in stats])
        info = DatasetInfo(
            name=Path(out).name, classes=labels.class_names(), label_values=list(labels.values),
            ignore_label=labels.ignore_value, spacing=plan.spacing or _triple(np.median(
                spacings, axis=0)), modality=listing.modality, channels=_channels(listing),
            normalization=plan.norm, ct_window=plan.ct_window if plan.norm == "ct" else None,
            source=listing.source, hco_version=__version__,
        )
        data_plan = DataPlan(
            preprocess=plan.model_copy(update={"labels": labels}), channels=info.channels,
            spacing_min=_triple(spacings.min(0)), spacing_max=_triple(spacings.max(0)),
            spacing_median=_triple(np.median(spacings, axis=0)), upstream=listing.upstream,
            source=listing.source)
        write_metadata(tmp, info, splits, data_plan)
        write_fingerprint(tmp, fingerprint_dataset(PreparedDataset(tmp)))
    return PrepareSummary(out=Path(out), info=info, splits=splits, cases=stats,
                          skipped=list(listing.skipped),
                          dropped_empty_labels=[s.case for s in stats if s.dropped_empty_label],
                          seconds=time.perf_counter() - start)


def _main_splits(listing: SourceListing, split: SplitOptions, *, shuffle: bool,
                 groups: Groups | None) -> Splits:
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
        test = pick_test(listing.train_order, split.test, seed=split.seed, has_label=has_label,
                         groups=groups)
    _check_test_groups(test, listing.train_order, groups)
    train = [c for c in listing.train_order if c not in set(test)]
    if shuffle:
        train = labeled_first_order(train, seed=split.seed, has_label=has_label, groups=groups)
    labeled = split.labeled or labeled_capacity(train, has_label=has_label, groups=groups)
    if not split.labeled and labeled < 1:  # no --labeled: say why no case can be labeled
        held = f" after {len(test)} test case{'s' * (len(test) != 1)}" if test else ""
        raise ConfigError(f"no labeled case is left to train on{held} ({len(train)} training "
                          f"case{'s' * (len(train) != 1)}, "
                          f"{sum(c in has_label for c in train)} with labels)")
    splits = ordered_splits(train, test, labeled=labeled, val=split.val, seed=split.seed,
                            has_label=has_label, groups=groups)
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
    # Cases on disk that the lists do not name are left out, but counted (never silently).
    listing.skipped = [*listing.skipped, *(c.case for c in listing.cases if c.case not in named)]
    listing.cases = [c for c in listing.cases if c.case in named]
    return listing


def _check_test_groups(test: list[str], train: list[str], groups: Groups | None) -> None:
    """Refuse a test list that leaves cases of its groups in training (a leak)."""
    if not groups:
        return
    held, tested = {groups[c] for c in test if c in groups}, set(test)
    leaked = next((c for c in train if c not in tested and groups.get(c) in held), None)
    if leaked is not None:
        raise DataError(f"case {leaked}: its group {groups[leaked]!r} has test cases, so it "
                        "must be a test case too (--group sets the groups)")


def _refuse_generic_only(split: SplitOptions, kind: str) -> None:
    if split.test is not None or split.test_list is not None or split.group is not None:
        raise ConfigError(f"{kind}: the test split comes from the source's lists; "
                          "--test, --test-list and --group apply to generic folders")


def _declared(listing: SourceListing) -> LabelMap:
    """The label map of the classes the source (or --classes) declares."""
    return build_label_map(listing.classes, names=listing.classes, ignore=listing.ignore_label)


def _discovered(stats: list[CaseStats], ignore: int | None) -> LabelMap:
    """The label map of every value found in the labels as read: a class whose few voxels
    resampling lost keeps its place (it counts 0 voxels), so the map matches the raw data."""
    values = {v for s in stats for v in s.label_values}
    values |= {v for s in stats for v, n in enumerate(s.label_counts) if n}
    return build_label_map(values, ignore=ignore)


def _channels(listing: SourceListing) -> int:
    return int(max(len(c.images) for c in listing.cases) or 1)


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))
