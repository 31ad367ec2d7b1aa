"""scripts/la_full_table.py on constructed runs: rows per arm and checkpoint, per-seed
differences and one-sided tests against sgd, the paper's rows beside them, the README sync."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from hco_cli.evaluation import stats
from tests.evaluation.compare_fixtures import cases, one_class, write_run
from tests.file_modules import ROOT, load_file
from tests.scripts.readme_tables import assert_readme_holds

lf = load_file("scripts/la_full_table.py", "la_full_table")

BASE = np.array([0.80, 0.85, 0.90, 0.70, 0.75, 0.88, 0.81, 0.79])
NOISE = 0.001 * np.array([1.1, -1.3, 2.1, -2.3, 0.7, -0.9, 0.35, 0.25])  # mean 0, no ties
CHECKPOINT_SHIFT = {"best": 0.0, "last": -0.01, "best-test": 0.02}


def _run(root: Path, batch: str, arm: str, seed: int, dice: np.ndarray) -> None:
    evals = {c: (cases(8), one_class(dice + shift)) for c, shift in CHECKPOINT_SHIFT.items()}
    write_run(root / "8l" / batch / arm, f"all-s{seed}", seed=seed, labeled=8, unlabeled=72,
              optimizer=arm, evals=evals)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """8 labeled, two sessions of one seed each: sgd, and sgd-hco 1 point above it (seed 1)
    and 3 points above (seed 2), plus zero-mean noise; a shared pre-training folder."""
    for seed, gain in ((1, 0.01), (2, 0.03)):
        sgd = BASE + 0.002 * seed
        _run(tmp_path, f"session{seed}", "sgd", seed, sgd)
        _run(tmp_path, f"session{seed}", "sgd-hco", seed, sgd + gain + NOISE)
        (tmp_path / "8l" / f"session{seed}" / "_pretrain" / "all-s1").mkdir(parents=True)
    return tmp_path


def test_rows_tests_and_paper(root: Path) -> None:
    lines = lf.rows(lf.find_runs(root))
    assert [(r.arm, r.checkpoint) for r in lines] == [
        ("sgd", "best"), ("sgd", "last"), ("sgd", "best-test"),
        ("sgd-hco", "best"), ("sgd-hco", "last"), ("sgd-hco", "best-test")]
    sgd_best, hco_test = lines[0], lines[5]
    per_case = BASE + 0.003  # the two seeds' sgd runs averaged per case
    assert sgd_best.mean["dice"] == pytest.approx(100 * per_case.mean())
    assert sgd_best.std["dice"] == pytest.approx(100 * per_case.std(ddof=1))
    assert sgd_best.mean["hd95"] == pytest.approx(20 * (1 - per_case).mean())
    assert sgd_best.p_wilcoxon == {} and sgd_best.seeds == ["seed 1", "seed 2"]
    assert hco_test.delta_dice == pytest.approx([1.0, 3.0])
    assert hco_test.mean["dice"] == pytest.approx(100 * (per_case + 0.02 + 0.02).mean())
    # every case better by 2 points +- noise: the exact one-sided Wilcoxon p is 1/256 per
    # metric (8 positive differences), 4/256 after Holm over the 4 metrics
    assert hco_test.p_wilcoxon["dice"] == pytest.approx(4 / 256)
    assert hco_test.p_wilcoxon["hd95"] == pytest.approx(4 / 256)
    text = lf.to_markdown(lines)
    assert "| `sgd-hco` (paper) | best on test | 2 | 90.75 (2.17) | 83.13 (3.63) | 1.64 (0.58) " \
           "| 5.52 (2.26) | | 0.002 (Wilcoxon) | 0.006 (Wilcoxon) |" in text
    assert "| `sgd-co` (hco) | | 0 | not run |" in text
    assert "| `sgd-hco` (hco) | best on test (as the reference code) | 2 | " in text
    # two seeds 1 and 3 points above: sd sqrt(2) points, so the test over the seeds finds
    # a gain only far beyond them
    detectable = stats.detectable_difference(math.sqrt(2), 2)
    assert hco_test.detectable == pytest.approx(detectable)
    assert f"| +1.00, +3.00 (80 %: {detectable:.2f}) | 0.016 / " in text
    # not run: sgd-co, hco-r1 and hco-r3 at 8 labeled, all five planned arms at 4
    assert "**4 labeled**" in text and text.count("| 0 | not run |") == 8


def test_an_arm_a_seed_ahead_is_compared_over_the_shared_seeds(root: Path) -> None:
    _run(root, "session3", "sgd-hco", 3, BASE - 0.5)  # a third seed that sgd has not run yet
    lines = {(r.arm, r.checkpoint): r for r in lf.rows(lf.find_runs(root))}
    hco = lines[("sgd-hco", "best")]
    assert hco.seeds == ["seed 1", "seed 2"] and hco.delta_dice == pytest.approx([1.0, 3.0])
    assert lines[("sgd", "best")].seeds == ["seed 1", "seed 2"]


def test_readme_table_is_what_the_committed_runs_give() -> None:
    runs = lf.find_runs(ROOT / "results" / "la-full")
    lines = lf.rows(runs)
    table = lf.to_markdown(lines, readings=lf.reading_rows(runs))
    command = "python scripts/la_full_table.py --readme README.md"
    assert_readme_holds(lf.BEGIN, lf.END, table, command)
    assert_readme_holds(lf.SUMMARY_BEGIN, lf.SUMMARY_END, lf.summary(lines), command)


def test_summary_gives_each_arm_its_means_and_verdicts_in_a_phrase(root: Path) -> None:
    """sgd-hco 1 and 3 points above sgd (two seeds: interim, undecided at every selection);
    sgd-co 0.5 below on both seeds, read against the paper's CO row (+0.12): its upper bound
    lies below, so that gain is excluded on every selection; no arm at 4 labeled."""
    for seed in (1, 2):
        _run(root, f"session{seed}", "sgd-co", seed, BASE + 0.002 * seed - 0.005 + NOISE / 10)
    text = lf.summary(lf.rows(lf.find_runs(root)))
    head, rule, *body = text.splitlines()
    assert head == ("| arm | 8 labeled: validation / last / test-selected | verdict | 4 labeled: "
                    "validation / last / test-selected | verdict |")
    assert rule == "| --- | --- | --- | --- | --- |"
    assert body == [
        "| `sgd-co`, Cautious SGD | -0.50 / -0.50 / -0.50 (2 seeds) | interim, 2 of the 3 "
        "planned seeds: the paper's +0.12 excluded on all three | not run |  |",
        "| `sgd-hco`, the printed Algorithm 2 | +2.00 / +2.00 / +2.00 (2 seeds) | interim, 2 of "
        "the 3 planned seeds: undecided on all three | not run |  |"]


@pytest.mark.parametrize(("per_selection", "expected"), [
    ([[0.5, 0.7, 0.6]] * 3, "a gain, smaller than the paper's +1.11 on all three"),
    ([[2.0, -1.0, 1.0], [-1.0, -0.5, -1.5], [-1.0, -0.5, -1.5]],
     "undecided on validation; the paper's +1.11 excluded on last and test-selected"),
    ([[-1.0, -0.5, -1.5], [2.0, -1.0, 1.0], [1.5, 2.5, 2.0]],
     "the paper's +1.11 excluded on validation; undecided on last; a gain on test-selected"),
    ([[1.0]] * 3, "interim, 1 of the 3 planned seeds: undecided on all three"),
])
def test_short_verdict_names_the_selections_of_each_outcome(
        per_selection: list[list[float]], expected: str) -> None:
    rows = [lf.Row(8, "sgd-hco", c, [], {}, {}, delta_dice=d)
            for c, d in zip(lf.CHECKPOINTS, per_selection, strict=True)]
    assert lf.short_verdict(rows, 1.11) == expected


def test_main_writes_and_errors_in_one_line(root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    assert lf.main([str(root), "--json", str(out), "--markdown", str(tmp_path / "t.md")]) == 0
    assert '"arm": "sgd-hco"' in out.read_text(encoding="utf-8")
    assert "NaN" not in out.read_text(encoding="utf-8")
    capsys.readouterr()
    assert lf.main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing'}: no such folder"]
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n", encoding="utf-8")
    assert lf.main([str(root), "--readme", str(readme)]) == 1
    assert readme.read_text(encoding="utf-8") == "no markers\n"


@pytest.mark.parametrize(("differences", "expected"), [
    # mean 0.6, sd 0.1, n 3: t = 10.39 on 2 df, p = 0.0046; upper bound 0.6 + 2.920 x 0.0577
    ([0.5, 0.7, 0.6], "a gain, smaller than the paper's +1.11 (mean +0.60 over 3 seeds, one-sided "
                      "p 0.005 with 2 degrees of freedom, 95 % upper bound +0.77)"),
    ([1.5, 2.5, 2.0], "a gain (mean +2.00 over 3 seeds, one-sided p 0.010 with 2 degrees of "
                      "freedom, 95 % upper bound +2.84)"),
    ([-1.0, -0.5, -1.5], "the paper's +1.11 excluded (mean -1.00 over 3 seeds, one-sided p 0.963 "
                         "with 2 degrees of freedom, 95 % upper bound -0.16)"),
    ([2.0, -1.0, 1.0], "undecided (mean +0.67 over 3 seeds, one-sided p 0.264 with 2 degrees of "
                        "freedom, 95 % upper bound +3.24)"),
    ([-1.45], "undecided (1 seed; the rule needs two or more)"),
    # R1's last iterate after two seeds (2026-12-03b): mean 0.14, sd 0.028, t = 7 on 1 df
    ([0.12, 0.16], "interim, 2 of the 3 planned seeds: a gain, smaller than the paper's +1.11 "
                   "(mean +0.14 over 2 seeds, one-sided p 0.045 with 1 degree of freedom, 95 % "
                   "upper bound +0.27)"),
])
def test_verdict_follows_the_preregistered_rule(differences: list[float], expected: str) -> None:
    assert lf.verdict(differences, 1.11) == expected


def test_verdicts_are_listed_under_the_table_for_the_hco_arms(root: Path) -> None:
    text = lf.to_markdown(lf.rows(lf.find_runs(root)))
    # sgd-hco 1 and 3 points above sgd on its two seeds at each selection: mean 2, sd 1.414,
    # t = 2 on 1 df, p = 0.148; upper bound 2 + 6.314 x 1 = 8.31
    assert ("- `sgd-hco`, best on test (as the reference code): interim, 2 of the 3 planned "
            "seeds: undecided (mean +2.00 over 2 seeds, one-sided p 0.148 with 1 degree of "
            "freedom, 95 % upper bound +8.31)") in text
    assert "Verdict on the paper's +1.11" in text and "- `sgd`," not in text


def test_readings_are_held_against_the_printed_update_on_their_common_seeds(root: Path) -> None:
    """hco-r1 0.5 and 1.5 points above the printed update (seeds 1 and 2; its seed 3 has no
    printed partner and is left out): per-seed differences, the t-test over the seeds and the
    lower bound as scipy gives them for (0.5, 1.5)."""
    for seed, gain in ((1, 0.015), (2, 0.045)):
        _run(root, f"session{seed}", "hco-r1", seed, BASE + 0.002 * seed + gain + NOISE)
    _run(root, "session3", "hco-r1", 3, BASE)
    readings = lf.reading_rows(lf.find_runs(root))
    assert [(r.arm, r.checkpoint) for r in readings] == [
        ("hco-r1", "best"), ("hco-r1", "last"), ("hco-r1", "best-test")]
    test = readings[2]
    assert test.seeds == ["seed 1", "seed 2"] and test.n_better == 2
    assert test.delta_dice == pytest.approx([0.5, 1.5])
    diffs = np.array([0.5, 1.5])
    t = sps.ttest_1samp(diffs, 0.0, alternative="greater")
    assert test.p_ttest == pytest.approx(t.pvalue)
    low, _ = sps.t.interval(0.90, 1, loc=1.0, scale=diffs.std(ddof=1) / np.sqrt(2))
    assert test.lower == pytest.approx(low)
    text = lf.to_markdown(lf.rows(lf.find_runs(root)), readings=readings)
    assert (f"| `hco-r1` | best on test (as the reference code) | 2 | +0.50, +1.50 | +1.00 (0.71) "
            f"| 2/2 | {t.pvalue:.3f} | {low:+.2f} |") in text
    assert "The readings against the printed update (`sgd-hco`), 8 labeled" in text
    # no reading, no such table
    assert "readings against" not in lf.to_markdown(lf.rows(lf.find_runs(root)), readings=[])
