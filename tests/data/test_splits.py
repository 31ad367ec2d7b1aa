"""Splits and fold grids: protocol order, seeded choices, disjoint and complete folds."""

from __future__ import annotations

import pytest

from hco_cli.data.dataset import Splits
from hco_cli.data.splits import (
    case_groups,
    fold_grid,
    labeled_first_order,
    ordered_splits,
    pick_test,
)
from hco_cli.errors import ConfigError

IDS = [f"c{i:02d}" for i in range(30)]


def test_labeled_is_the_first_n_in_order() -> None:
    splits = ordered_splits(IDS[:20], IDS[20:], labeled=4, val=0, seed=0, has_label=set(IDS))
    assert splits.labeled == IDS[:4]
    assert splits.unlabeled == IDS[4:20]
    assert splits.test == IDS[20:]


def test_val_is_seeded_and_taken_from_unlabeled_cases_with_labels() -> None:
    has_label = set(IDS[:12])
    a = ordered_splits(IDS[:20], [], labeled=4, val=3, seed=1, has_label=has_label)
    b = ordered_splits(IDS[:20], [], labeled=4, val=3, seed=1, has_label=has_label)
    c = ordered_splits(IDS[:20], [], labeled=4, val=3, seed=2, has_label=has_label)
    assert a == b and a.val != c.val
    assert set(a.val) <= set(IDS[4:12])
    assert sorted(a.labeled + a.unlabeled + a.val) == sorted(IDS[:20])
    with pytest.raises(ConfigError, match="--val 9: only 8"):
        ordered_splits(IDS[:20], [], labeled=4, val=9, seed=1, has_label=has_label)


def test_labeled_needs_labels() -> None:
    with pytest.raises(ConfigError, match="case c02 has no label"):
        ordered_splits(IDS[:5], [], labeled=3, val=0, seed=0, has_label={"c00", "c01"})


def test_generic_order_puts_labeled_cases_first_and_is_seeded() -> None:
    has_label = set(IDS[10:])
    order = labeled_first_order(IDS, seed=5, has_label=has_label)
    assert set(order[:20]) == has_label and order[20:] == IDS[:10]
    assert order == labeled_first_order(IDS, seed=5, has_label=has_label)
    assert order != labeled_first_order(IDS, seed=6, has_label=has_label)
    test = pick_test(IDS, 4, seed=0, has_label=has_label)
    assert len(test) == 4 and set(test) <= has_label


@pytest.mark.parametrize(("k", "j", "size"), [(4, 4, 5), (3, 2, 2), (1, 5, 1)])
def test_fold_grid_is_disjoint_and_complete(k: int, j: int, size: int) -> None:
    has_label = set(IDS[:24])
    splits = Splits(labeled=IDS[:size], unlabeled=IDS[size:28], test=IDS[28:])
    folds = fold_grid(splits, labeled_folds=k, unlabeled_folds=j, seed=0, has_label=has_label)
    assert len(folds.labeled) == k and len(folds.unlabeled) == j
    every = [c for fold in folds.labeled + folds.unlabeled for c in fold]
    assert len(every) == len(set(every))
    assert sorted(every) == sorted(IDS[:28])
    assert all(len(f) == size and set(f) <= has_label for f in folds.labeled)
    sizes = [len(f) for f in folds.unlabeled]
    assert max(sizes) - min(sizes) <= 1
    splits.folds = folds
    resolved = splits.resolve(f"L{k - 1}U{j - 1}")
    assert not set(resolved["labeled"]) & set(resolved["unlabeled"])


def test_fold_grid_errors() -> None:
    splits = Splits(labeled=IDS[:5], unlabeled=IDS[5:10])
    with pytest.raises(ConfigError, match="go together"):
        fold_grid(splits, labeled_folds=2, unlabeled_folds=0, seed=0, has_label=set(IDS))
    with pytest.raises(ConfigError, match="need 15 labeled training cases, but only 10"):
        fold_grid(splits, labeled_folds=3, unlabeled_folds=1, seed=0, has_label=set(IDS))


GROUPED = [f"p{p}_frame{f:02d}" for p in range(6) for f in (1, 12)] + ["lone"]


def test_default_groups_take_the_text_before_a_final_frame_or_t() -> None:
    groups = case_groups(["p1_frame01", "p1_frame12", "s2_t3", "s2_t10", "solo", "x_total"])
    assert groups == {"p1_frame01": "p1", "p1_frame12": "p1", "s2_t3": "s2", "s2_t10": "s2",
                      "solo": "solo", "x_total": "x_total"}


def test_mri_modality_names_inside_ids_are_no_time_points() -> None:
    """``_t2`` of ``fetal_t2_000`` names a T2 scan: every case stays its own group (the old
    pattern put them all in group ``fetal``); a final ``_t<digits>`` is still a time point."""
    ids = ["fetal_t2_000", "fetal_t2_001", "fetal_t2_002", "sub01_T1w", "sub02_T1w",
           "brain_t1_ce_7", "p3_frame01_ed", "s4_t1", "s4_t2"]
    groups = case_groups(ids)
    assert groups == {**{case: case for case in ids[:7]}, "s4_t1": "s4", "s4_t2": "s4"}
    test = pick_test(ids[:3], 2, seed=0, has_label=set(ids), groups=groups)
    assert len(test) == 2 and set(test) < set(ids[:3])
    assert case_groups(["a-1", "a-2", "b-1"], r"^([a-z]+)-") == {"a-1": "a", "a-2": "a",
                                                                  "b-1": "b"}
    with pytest.raises(ConfigError, match="--group '\\(' is not a regular expression"):
        case_groups(["a"], "(")


def test_grouped_selections_take_whole_groups() -> None:
    groups = case_groups(GROUPED)
    test = pick_test(GROUPED, 5, seed=0, has_label=set(GROUPED), groups=groups)
    assert len(test) == 5 and "lone" in test  # four frames of two patients plus the lone case
    order = labeled_first_order(GROUPED, seed=1, has_label=set(GROUPED), groups=groups)
    for case in GROUPED[:12]:  # the two frames of a patient are next to each other
        first = order.index(case.split("_")[0] + "_frame01")
        assert order[first + 1] == case.split("_")[0] + "_frame12"
    with pytest.raises(ConfigError, match="--labeled 3 splits the cases of group"):
        ordered_splits(GROUPED[:12], [], labeled=3, val=0, seed=0, has_label=set(GROUPED),
                       groups=groups)
    splits = ordered_splits(GROUPED[:12], [], labeled=4, val=4, seed=0,
                            has_label=set(GROUPED), groups=groups)
    assert {groups[c] for c in splits.val}.isdisjoint({groups[c] for c in splits.unlabeled})
    assert len(splits.val) == 4 and len({groups[c] for c in splits.val}) == 2


def test_groups_of_one_reproduce_the_ungrouped_choices() -> None:
    has_label = set(IDS[:24])
    alone = {c: c for c in IDS}
    assert pick_test(IDS, 5, seed=4, has_label=has_label, groups=alone) == pick_test(
        IDS, 5, seed=4, has_label=has_label)
    splits = Splits(labeled=IDS[:3], unlabeled=IDS[3:28], test=IDS[28:])
    assert fold_grid(splits, labeled_folds=3, unlabeled_folds=2, seed=1, has_label=has_label,
                     groups=alone) == fold_grid(splits, labeled_folds=3, unlabeled_folds=2,
                                                seed=1, has_label=has_label)
