"""Splits and fold grids of a prepared dataset.

Definitions used by every source:

- *groups*: cases that must share a split, such as the frames of one patient. Generic folders
  group by ``--group REGEX`` (the first capture group of its first match in the case id, or
  the whole match; an id without a match is its own group), by default
  :data:`DEFAULT_GROUP`: an id that *ends* in a time point, ``_frame<digits>`` (ACDC's
  ``patient001_frame01`` and ``patient001_frame12``) or ``_t<digits>`` (longitudinal scans
  ``s2_t1``, ``s2_t2``), belongs to the text before it. Elsewhere in an id such text is no time
  point: ``fetal_t2_000`` (a T2 scan) is its own group. Lists (LA, pancreas) give every case its
  own group.
- *training order*: the training ids in the order the labeled subset is taken from. LA and
  the pancreas lists use their file order (the protocol: labeled = first N); generic folders
  use a seeded permutation of the groups whose cases all have labels (a group's cases stay
  together), followed by the other ids, sorted.
- ``labeled`` = the first N ids of the training order (N must end at a group boundary);
  ``unlabeled`` = the rest.
- ``val`` = K seeded ids taken out of the unlabeled ids that have a label (validation needs
  labels), whole groups at a time; ``--test N`` picks test cases the same way.
- *labeled-capable pool* = the labeled and unlabeled ids (test and val excluded) that have a
  stored label. Fold grids draw K disjoint labeled folds of size N (the size of the
  ``labeled`` split unless ``--fold-size`` says otherwise) from a seeded permutation of this
  pool's groups; every other training id (unlabeled, with or without label) is dealt, group by
  group, into J disjoint unlabeled folds of near-equal size. Labeled and unlabeled folds are
  disjoint and together cover the training ids; ``L{i}U{j}`` pairs labeled fold i with
  unlabeled fold j.

Whole groups fill a count greedily in their seeded order (a group that would overshoot is
passed over); a count that no choice of whole groups reaches is an error. With one case a
group this is exactly "the first N of a seeded permutation".

Seeds: each use draws from its own stream ``numpy.random.default_rng([seed, purpose])``, so
changing ``--val`` does not change the test selection, for example.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from hco_cli.data.dataset import Folds, Splits
from hco_cli.errors import ConfigError

PURPOSE_TEST, PURPOSE_LABELED, PURPOSE_VAL, PURPOSE_FOLDS = 1, 2, 3, 4
# A time-point suffix only at the end of the id: MRI modality names inside ids (``_t1_``,
# ``_t2_000``, ``_T1w``) would otherwise merge every case of a site into one group.
DEFAULT_GROUP = r"^(.+)_(?:frame|t)\d+$"
Groups = Mapping[str, str]


def case_groups(ids: Sequence[str], pattern: str | None = DEFAULT_GROUP) -> dict[str, str]:
    """Group key of every id under ``pattern`` (None: every id is its own group)."""
    if pattern is None:
        return {case: case for case in ids}
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--group {pattern!r} is not a regular expression: {exc}") from None
    out = {}
    for case in ids:
        match = regex.search(case)
        key = (match.group(1) if regex.groups else match.group(0)) if match else None
        out[case] = key or case
    return out


def labeled_capacity(ids: Sequence[str], *, has_label: Collection[str],
                     groups: Groups | None = None) -> int:
    """How many of ``ids`` can be labeled: the cases of groups whose cases all have labels."""
    return sum(len(g) for g in _whole_groups(ids, groups, has_label))


def seeded_permutation(ids: Sequence[str], *, seed: int, purpose: int) -> list[str]:
    """``ids`` in a seeded random order (the same for the same seed, purpose and ids)."""
    rng = np.random.default_rng([seed, purpose])
    return [ids[i] for i in rng.permutation(len(ids))]


def pick_test(
    ids: Sequence[str], count: int, *, seed: int, has_label: Collection[str],
    groups: Groups | None = None,
) -> list[str]:
    """``count`` seeded ids with labels (whole groups), in their original order."""
    candidates = _whole_groups(ids, groups, has_label)
    total = sum(len(g) for g in candidates)
    if count > total:
        raise ConfigError(f"--test {count}: only {total} cases have labels"
                          + ("" if total == sum(c in has_label for c in ids)
                             else " in groups whose cases all have labels"))
    shuffled = _permuted_groups(candidates, seed=seed, purpose=PURPOSE_TEST)
    chosen = set(_fill(shuffled, count, option="--test"))
    return [case for case in ids if case in chosen]


def labeled_first_order(
    ids: Sequence[str], *, seed: int, has_label: Collection[str], groups: Groups | None = None,
) -> list[str]:
    """Training order of a generic folder: seeded labeled groups, then the other ids sorted."""
    labeled = _whole_groups(sorted(ids), groups, has_label)
    order = [c for g in _permuted_groups(labeled, seed=seed, purpose=PURPOSE_LABELED) for c in g]
    taken = set(order)
    return order + [case for case in sorted(ids) if case not in taken]


def ordered_splits(
    train_order: Sequence[str],
    test: Sequence[str],
    *,
    labeled: int,
    val: int,
    seed: int,
    has_label: Collection[str],
    groups: Groups | None = None,
) -> Splits:
    """labeled = first ``labeled`` of ``train_order``; val = ``val`` seeded unlabeled ids."""
    if labeled < 1:
        raise ConfigError("--labeled must be at least 1")
    if labeled > len(train_order):
        raise ConfigError(
            f"--labeled {labeled}: only {len(train_order)} training cases are available"
        )
    chosen = list(train_order[:labeled])
    unlabelled = [case for case in chosen if case not in has_label]
    if unlabelled:
        raise ConfigError(
            f"--labeled {labeled}: case {unlabelled[0]} has no label "
            f"(only {sum(c in has_label for c in train_order)} training cases have labels)"
        )
    _check_boundary(train_order, labeled, groups)
    rest = list(train_order[labeled:])
    held: list[str] = []
    if val:
        candidates = _whole_groups(rest, groups, has_label)
        total = sum(len(g) for g in candidates)
        if val > total:
            raise ConfigError(
                f"--val {val}: only {total} unlabeled cases have labels to hold out"
            )
        shuffled = _permuted_groups(candidates, seed=seed, purpose=PURPOSE_VAL)
        picked = set(_fill(shuffled, val, option="--val"))
        held = [case for case in rest if case in picked]
        rest = [case for case in rest if case not in picked]
    return Splits(labeled=chosen, unlabeled=rest, val=held, test=list(test))


def fold_grid(
    splits: Splits, *, labeled_folds: int, unlabeled_folds: int, seed: int,
    has_label: Collection[str], size: int | None = None, groups: Groups | None = None,
) -> Folds:
    """K disjoint labeled folds of ``size`` (default len(labeled)), J unlabeled folds."""
    if labeled_folds == 0 and unlabeled_folds == 0:
        return Folds()
    if labeled_folds < 1 or unlabeled_folds < 1:
        raise ConfigError(
            "--folds-labeled and --folds-unlabeled go together (both at least 1), "
            f"got {labeled_folds} and {unlabeled_folds}"
        )
    training = [*splits.labeled, *splits.unlabeled]
    pool = _whole_groups(training, groups, has_label)
    count = sum(len(g) for g in pool)
    size = size or len(splits.labeled)
    if labeled_folds * size > count:
        raise ConfigError(
            f"--folds-labeled {labeled_folds} x {size} labeled cases need "
            f"{labeled_folds * size} labeled training cases, but only {count} have labels"
        )
    shuffled = _permuted_groups(pool, seed=seed, purpose=PURPOSE_FOLDS)
    labeled = []
    for _ in range(labeled_folds):
        fold = _fill(shuffled, size, option="--fold-size")
        shuffled = [g for g in shuffled if g[0] not in set(fold)]
        labeled.append(sorted(fold))
    used = {case for fold in labeled for case in fold}
    remaining = [case for case in training if case not in used]
    rest = _grouped(remaining, groups)
    if unlabeled_folds > len(rest):
        raise ConfigError(
            f"--folds-unlabeled {unlabeled_folds}: only {len(rest)} training "
            f"{'cases are' if len(rest) == len(remaining) else 'groups of cases are'} "
            "left for unlabeled folds"
        )
    dealt = _permuted_groups(rest, seed=seed, purpose=PURPOSE_FOLDS + 1)
    unlabeled = [sorted(c for g in dealt[j::unlabeled_folds] for c in g)
                 for j in range(unlabeled_folds)]
    return Folds(labeled=labeled, unlabeled=unlabeled)


def _grouped(ids: Sequence[str], groups: Groups | None) -> list[list[str]]:
    """``ids`` as lists of one group each, in order of first appearance."""
    out: dict[str, list[str]] = {}
    for case in ids:
        out.setdefault(groups.get(case, case) if groups else case, []).append(case)
    return list(out.values())


def _whole_groups(ids: Sequence[str], groups: Groups | None,
                  has_label: Collection[str]) -> list[list[str]]:
    """Groups of ``ids`` whose cases all have labels (and that lie wholly within ``ids``)."""
    members = Counter((groups or {}).values())
    out = []
    for group in _grouped(ids, groups):
        key = groups.get(group[0], group[0]) if groups else group[0]
        whole = not groups or members.get(key, 1) == len(group)
        if whole and all(case in has_label for case in group):
            out.append(group)
    return out


def _permuted_groups(groups: list[list[str]], *, seed: int, purpose: int) -> list[list[str]]:
    rng = np.random.default_rng([seed, purpose])
    return [groups[i] for i in rng.permutation(len(groups))]


def _fill(groups: list[list[str]], count: int, *, option: str) -> list[str]:
    """Whole groups, in order, that add up to exactly ``count`` cases (greedy)."""
    out: list[str] = []
    for group in groups:
        if len(out) + len(group) <= count:
            out.extend(group)
        if len(out) == count:
            return out
    raise ConfigError(f"{option} {count}: whole groups of cases (--group) cannot add up to "
                      f"{count}; the closest is {len(out)}")


def _check_boundary(order: Sequence[str], labeled: int, groups: Groups | None) -> None:
    """Refuse a labeled count that splits a group between labeled and unlabeled."""
    if not groups or labeled >= len(order):
        return
    key = groups.get(order[labeled - 1])
    if key is not None and groups.get(order[labeled]) == key:
        raise ConfigError(f"--labeled {labeled} splits the cases of group {key!r} between "
                          "the labeled and unlabeled splits; choose a count that ends at a "
                          "group boundary")
