"""Splits and fold grids of a prepared dataset.

Definitions used by every source:

- *training order*: the training ids in the order the labeled subset is taken from. LA and
  the pancreas lists use their file order (the protocol: labeled = first N); generic folders
  use a seeded permutation of the cases that have labels, followed by those that have none.
- ``labeled`` = the first N ids of the training order; ``unlabeled`` = the rest.
- ``val`` = K seeded ids taken out of the unlabeled ids that have a label (validation needs
  labels).
- *labeled-capable pool* = the labeled and unlabeled ids (test and val excluded) that have a
  stored label. Fold grids draw K disjoint labeled folds of size N (the size of the
  ``labeled`` split unless ``--fold-size`` says otherwise) from a seeded permutation of this
  pool; every other training id (unlabeled, with or without label) is dealt into J disjoint
  unlabeled folds of near-equal size. Labeled and unlabeled folds are disjoint and together
  cover the training ids; ``L{i}U{j}`` pairs labeled fold i with unlabeled fold j.

Seeds: each use draws from its own stream ``numpy.random.default_rng([seed, purpose])``, so
changing ``--val`` does not change the test selection, for example.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from hco_cli.data.dataset import Folds, Splits
from hco_cli.errors import ConfigError

PURPOSE_TEST, PURPOSE_LABELED, PURPOSE_VAL, PURPOSE_FOLDS = 1, 2, 3, 4


def seeded_permutation(ids: Sequence[str], *, seed: int, purpose: int) -> list[str]:
    """``ids`` in a seeded random order (the same for the same seed, purpose and ids)."""
    rng = np.random.default_rng([seed, purpose])
    return [ids[i] for i in rng.permutation(len(ids))]


def pick_test(
    ids: Sequence[str], count: int, *, seed: int, has_label: Collection[str]
) -> list[str]:
    """``count`` seeded ids with labels, in their original order."""
    candidates = [case for case in ids if case in has_label]
    if count > len(candidates):
        raise ConfigError(f"--test {count}: only {len(candidates)} cases have labels")
    chosen = set(seeded_permutation(candidates, seed=seed, purpose=PURPOSE_TEST)[:count])
    return [case for case in ids if case in chosen]


def labeled_first_order(
    ids: Sequence[str], *, seed: int, has_label: Collection[str]
) -> list[str]:
    """Training order of a generic folder: seeded labeled ids, then unlabeled ids sorted."""
    with_label = [case for case in sorted(ids) if case in has_label]
    without = [case for case in sorted(ids) if case not in has_label]
    return seeded_permutation(with_label, seed=seed, purpose=PURPOSE_LABELED) + without


def ordered_splits(
    train_order: Sequence[str],
    test: Sequence[str],
    *,
    labeled: int,
    val: int,
    seed: int,
    has_label: Collection[str],
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
    rest = list(train_order[labeled:])
    held = []
    if val:
        candidates = [case for case in rest if case in has_label]
        if val > len(candidates):
            raise ConfigError(
                f"--val {val}: only {len(candidates)} unlabeled cases have labels to hold out"
            )
        picked = set(seeded_permutation(candidates, seed=seed, purpose=PURPOSE_VAL)[:val])
        held = [case for case in rest if case in picked]
        rest = [case for case in rest if case not in picked]
    return Splits(labeled=chosen, unlabeled=rest, val=held, test=list(test))


def fold_grid(
    splits: Splits, *, labeled_folds: int, unlabeled_folds: int, seed: int,
    has_label: Collection[str], size: int | None = None,
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
    pool = [case for case in training if case in has_label]
    size = size or len(splits.labeled)
    if labeled_folds * size > len(pool):
        raise ConfigError(
            f"--folds-labeled {labeled_folds} x {size} labeled cases need "
            f"{labeled_folds * size} labeled training cases, but only {len(pool)} have labels"
        )
    shuffled = seeded_permutation(pool, seed=seed, purpose=PURPOSE_FOLDS)
    labeled = [sorted(shuffled[i * size:(i + 1) * size]) for i in range(labeled_folds)]
    used = {case for fold in labeled for case in fold}
    remaining = [case for case in training if case not in used]
    if unlabeled_folds > len(remaining):
        raise ConfigError(
            f"--folds-unlabeled {unlabeled_folds}: only {len(remaining)} training cases are "
            "left for unlabeled folds"
        )
    dealt = seeded_permutation(remaining, seed=seed, purpose=PURPOSE_FOLDS + 1)
    unlabeled = [sorted(dealt[j::unlabeled_folds]) for j in range(unlabeled_folds)]
    return Folds(labeled=labeled, unlabeled=unlabeled)
