"""The main table of ``hco compare`` says over how many cases a mean is, where NaN values were
left out, and bolds no best between means of different cases.

Regression test of the report: an arm missing class 4 in 3 of 6 cases showed its ASD/HD95
means over those 3 cases, bolded as the best, under the caption "across 6 cases"; only the
details table showed n=3.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hco_cli.evaluation.compare import compare_checkpoints, compare_runs
from hco_cli.evaluation.compare_tables import (
    checkpoint_overview,
    comparison_tables,
    to_markdown,
)
from tests.evaluation.compare_fixtures import cases, one_class, write_run

NAN = math.nan
DICE_REF = np.array([0.70, 0.72, 0.68, 0.75, 0.71, 0.69])
# The "miss" arm finds class 4 in the first three cases only (and well there); elsewhere Dice
# and Jaccard are 0 and the distances are NaN.
DICE_MISS = np.array([0.80, 0.82, 0.79, 0.0, 0.0, 0.0])
DIST_MISS = np.array([1.0, 1.2, 0.9, NAN, NAN, NAN])
COLUMNS = {"dice": 4, "jaccard": 5, "asd": 6, "hd95": 7}  # of the paper-layout class table


def _write(tmp_path: Path, miss_dice: np.ndarray, miss_dist: np.ndarray,
           ref_dist: np.ndarray | None = None) -> list[str]:
    ref = one_class(DICE_REF, cls="4", hd95=ref_dist, asd=None if ref_dist is None else ref_dist)
    miss = one_class(miss_dice, hd95=miss_dist, asd=miss_dist / 2, cls="4")
    evals = {"best": (cases(6), ref), "last": (cases(6), ref)}
    write_run(tmp_path, "ref", evals=evals)
    write_run(tmp_path, "miss", optimizer="sgd-hco",
              evals={"best": (cases(6), miss), "last": (cases(6), miss)})
    return [str(tmp_path / "ref"), str(tmp_path / "miss")]


def test_means_over_fewer_cases_say_so_and_are_not_bold(tmp_path: Path) -> None:
    result = compare_runs(_write(tmp_path, DICE_MISS, DIST_MISS))
    main, *_ = comparison_tables(result)
    ref, miss = main.rows
    for metric in ("asd", "hd95"):
        col = COLUMNS[metric]
        assert miss[col].text.endswith(" (n=3)"), miss[col].text
        assert "(n=" not in ref[col].text  # the reference's mean covers all 6 cases
        assert not miss[col].bold and not ref[col].bold  # means of different cases
    # Dice and Jaccard cover all six cases in both arms: no count, and the best is bold.
    for metric in ("dice", "jaccard"):
        col = COLUMNS[metric]
        assert "(n=" not in ref[col].text + miss[col].text
        assert ref[col].bold and not miss[col].bold
    assert "across 6 cases" in main.caption
    markdown = to_markdown([main])
    assert "(n=3)" in markdown and "**" in markdown


def test_narrow_layout_and_checkpoint_overview_say_so_too(tmp_path: Path) -> None:
    arms = _write(tmp_path, DICE_MISS, DIST_MISS)
    compact = comparison_tables(compare_runs(arms), compact=True)
    means = next(t for t in compact if t.title.endswith("mean (std)"))
    miss = means.rows[1]
    assert miss[3].text.endswith(" (n=3)") and not miss[3].bold  # ASD
    results = compare_checkpoints(arms, ["best", "last"])
    overview = checkpoint_overview(results, metric="hd95")[0]
    cells = [c for c in overview.rows[1] if "(n=" in c.text]
    assert len(cells) == 2 and not any(c.bold for c in cells)
    assert not any(c.bold for row in overview.rows for c in row)


def test_same_cases_missing_in_every_arm_keep_the_best(tmp_path: Path) -> None:
    """Both arms' distances cover the same three cases: the means compare, the best is bold,
    and each cell says it is over 3 of the 6 cases."""
    ref_dist = np.array([2.0, 2.1, 1.9, NAN, NAN, NAN])
    result = compare_runs(_write(tmp_path, DICE_MISS, DIST_MISS, ref_dist=ref_dist))
    main, *_ = comparison_tables(result)
    ref, miss = main.rows
    col = COLUMNS["hd95"]
    assert ref[col].text.endswith(" (n=3)") and miss[col].text.endswith(" (n=3)")
    assert miss[col].bold and not ref[col].bold


def test_tables_without_nan_are_unchanged(tmp_path: Path) -> None:
    dice = np.array([0.80, 0.82, 0.79, 0.77, 0.81, 0.74])
    result = compare_runs(_write(tmp_path, dice, 1 - dice))  # better on every metric
    main, *_ = comparison_tables(result)
    texts = [c.text for row in main.rows for c in row]
    assert not any("(n=" in t for t in texts)
    ref, miss = main.rows
    dice_ref = f"{100 * DICE_REF.mean():.2f} ({100 * DICE_REF.std(ddof=1):.2f})"
    assert ref[COLUMNS["dice"]].text == dice_ref
    assert all(miss[c].bold for c in COLUMNS.values())
    assert not any(c.bold for c in ref)
