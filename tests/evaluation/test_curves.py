"""Validation curves: each arm's mean over its seeds at each logged validation, the paired
differences per seed and their summary over each phase, on hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation.curves import compare_curves, curves_tables, write_curves
from tests.evaluation.compare_fixtures import write_run


def val(phase: str, it: int, dice: float, test: float | None = None,
        split: str = "val") -> dict[str, Any]:
    """One validation record of metrics.jsonl, as hco train writes it."""
    record: dict[str, Any] = {"phase": "val", "train_phase": phase, "iter": it, "split": split,
                              "dice": dice, "dice_per_class": [dice], "best": False}
    if test is not None:
        record["also"] = {"test": test}
    return record


# selftrain validations on val (fractions) per arm and seed; test = val - 0.1
VALUES = {("sgd", 1): (0.80, 0.82, 0.84), ("sgd", 2): (0.60, 0.62, 0.64),
          ("hco", 1): (0.81, 0.80, 0.86), ("hco", 2): (0.61, 0.63, 0.66)}
ITERS = (200, 300, 400)


def _arms(root: Path) -> list[str]:
    for (arm, seed), values in VALUES.items():
        records = [val("pretrain", 100, 0.5)]  # pre-training: no also_select_on split
        records += [val("selftrain", i, v, v - 0.1) for i, v in zip(ITERS, values, strict=True)]
        write_run(root, f"{arm}-s{seed}", seed=seed, steps=records)
    return [f"sgd={root}/sgd-s*", f"hco={root}/hco-s*"]


def test_rows_and_phase_summary_by_hand(tmp_path: Path) -> None:
    result = compare_curves(_arms(tmp_path))
    assert result.split == "val" and result.keys == ("s1", "s2")
    assert [(r.phase, r.first) for r in result.rows] == [
        ("pretrain", 100), ("selftrain", 200), ("selftrain", 300), ("selftrain", 400)]
    row = result.rows[2]  # iteration 300: sgd (0.82, 0.62), hco (0.80, 0.63)
    assert row.means["sgd"] == pytest.approx(0.72) and row.means["hco"] == pytest.approx(0.715)
    assert row.differences["hco"] == pytest.approx((-2.0, 1.0))
    assert row.diff_mean("hco") == pytest.approx(-0.5)
    assert row.diff_std("hco") == pytest.approx(math.sqrt(4.5))
    pre, self_ = result.summaries
    assert pre.phase == "pretrain" and pre.differences == pytest.approx((0.0, 0.0))
    assert pre.n_better == 0 and pre.rows_higher == 0
    # per seed over iterations 200-400: seed 1 (+1 - 2 + 2) / 3, seed 2 (+1 + 1 + 2) / 3
    assert self_.differences == pytest.approx((1 / 3, 4 / 3))
    assert self_.mean == pytest.approx(5 / 6) and self_.std == pytest.approx(math.sqrt(0.5))
    expected = sps.ttest_1samp([1 / 3, 4 / 3], 0.0, alternative="greater").pvalue
    assert self_.p_ttest == pytest.approx(expected)
    assert (self_.n_better, self_.rows_higher, self_.n_rows, self_.n_points) == (2, 2, 3, 3)


def test_bins_pool_validations(tmp_path: Path) -> None:
    result = compare_curves(_arms(tmp_path), bin_width=2)
    rows = [r for r in result.rows if r.phase == "selftrain"]
    assert [(r.first, r.last) for r in rows] == [(200, 300), (400, 400)]
    assert rows[0].differences["hco"] == pytest.approx((-0.5, 1.0))
    assert rows[0].means["sgd"] == pytest.approx(np.mean([0.80, 0.82, 0.60, 0.62]))
    assert result.summaries[1].differences == pytest.approx((1 / 3, 4 / 3))  # bins only group rows


def test_a_seed_not_in_every_arm_is_left_out_and_said(tmp_path: Path) -> None:
    arms = _arms(tmp_path)
    write_run(tmp_path, "hco-s9", seed=9, steps=[val("selftrain", i, 0.9) for i in ITERS])
    result = compare_curves(arms)
    assert result.keys == ("s1", "s2") and result.unpaired == {"hco": ["s9"]}
    assert result.summaries[1].differences == pytest.approx((1 / 3, 4 / 3))
    assert "Runs left out, without a partner in every arm: hco: s9." in (
        curves_tables(result)[0].caption)


def test_folds_pair_by_seed_and_fold(tmp_path: Path) -> None:
    """Runs of one seed on two folds (an hco sweep's L x U folds) pair fold by fold."""
    for arm, shift in (("sgd", 0.0), ("hco", 0.02)):
        for fold, level in (("L0U0", 0.6), ("L1U1", 0.7)):
            run = write_run(tmp_path, f"{arm}-{fold}-s1", seed=1,
                            steps=[val("train", i, level + shift) for i in ITERS])
            info = json.loads((run / "run.json").read_text(encoding="utf-8"))
            (run / "run.json").write_text(json.dumps({**info, "fold": fold}), encoding="utf-8")
    result = compare_curves([f"sgd={tmp_path}/sgd-*", f"hco={tmp_path}/hco-*"])
    assert result.keys == ("L0U0-s1", "L1U1-s1")
    assert result.summaries[0].differences == pytest.approx((2.0, 2.0))


def test_another_logged_split(tmp_path: Path) -> None:
    """--split test reads the also_select_on Dice; pre-training logged none, so it drops out."""
    result = compare_curves(_arms(tmp_path), split="test")
    assert result.split == "test"
    assert {r.phase for r in result.rows} == {"selftrain"}
    assert result.rows[0].means["sgd"] == pytest.approx(np.mean([0.70, 0.50]))
    assert result.summaries[0].differences == pytest.approx((1 / 3, 4 / 3))


def test_tables_and_files(tmp_path: Path) -> None:
    result = compare_curves(_arms(tmp_path / "runs"))
    tables = curves_tables(result)
    assert tables[0].title.startswith("Dice on val over training (%, mean over 2 runs per arm)")
    assert [c.text for c in tables[0].rows[2]] == [
        "selftrain", "300", "72.00", "71.50", "-2.00, +1.00: -0.50 (2.12)"]
    assert [c.text for c in tables[1].rows[1]][3:6] == ["+0.33, +1.33", "+0.83 (0.71)", "2/2"]
    out = tmp_path / "out"
    write_curves(result, json_path=out / "c.json", csv_path=out / "c.csv",
                 markdown_path=out / "c.md")
    data = json.loads((out / "c.json").read_text(encoding="utf-8"))
    assert data["split"] == "val" and data["pairs"] == ["s1", "s2"]
    hco_300 = next(r for r in data["rows"] if r["arm"] == "hco" and r["first_iter"] == 300)
    assert hco_300["diff_s1"] == pytest.approx(-2.0) and hco_300["diff"] == pytest.approx(-0.5)
    assert data["summary"][1]["mean"] == pytest.approx(5 / 6)
    assert (out / "c.csv").read_text(encoding="utf-8").startswith("split,phase,first_iter")
    assert "### Dice on val over training" in (out / "c.md").read_text(encoding="utf-8")


def test_errors(tmp_path: Path) -> None:
    arms = _arms(tmp_path / "runs")
    with pytest.raises(DataError, match="no Dice on split 'train'"):
        compare_curves(arms, split="train")
    with pytest.raises(ConfigError, match="--bin"):
        compare_curves(arms, bin_width=0)
    other = tmp_path / "other"
    write_run(other, "a", seed=1, steps=[val("selftrain", 200, 0.5)])
    write_run(other, "b", seed=1, steps=[val("selftrain", 200, 0.6)])
    with pytest.raises(DataError, match="the same seed and fold"):
        compare_curves([arms[0], f"dup={other}/*"])
    write_run(other, "c", seed=7, steps=[val("selftrain", 200, 0.6)])
    with pytest.raises(DataError, match="no seed"):
        compare_curves([arms[0], str(other / "c")])
    write_run(other, "d", seed=1, steps=[val("selftrain", 200, 0.6, split="test")])
    with pytest.raises(DataError, match="different splits"):
        compare_curves([str(other / "a"), str(other / "d")])
    write_run(other, "e", seed=1, steps=[{"phase": "selftrain", "iter": 1, "epoch": 0}])
    with pytest.raises(DataError, match="logged no validation"):
        compare_curves([str(other / "a"), str(other / "e")])
