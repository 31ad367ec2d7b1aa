"""Paper-layout tables, Markdown, and the JSON/CSV records of ``hco compare``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from hco_cli.evaluation import stats
from hco_cli.evaluation.compare import compare_runs
from hco_cli.evaluation.compare_tables import (
    checkpoint_overview,
    comparison_notes,
    comparison_tables,
    pairs_are_seeds,
    write_comparison,
)
from tests.evaluation.compare_fixtures import cases, one_class, write_run

DICE_A = np.array([0.80, 0.85, 0.90, 0.70, 0.75, 0.88])
DICE_B = np.array([0.84, 0.86, 0.93, 0.74, 0.78, 0.90])
HD_B = 20 * (1 - DICE_B)
HD_B[2] = math.nan

KEYS = {"arm", "reference", "class", "metric", "mean_a", "mean_b", "std_a", "std_b", "n",
        "n_excluded", "p_wilcoxon", "p_ttest", "mean_diff", "rel_change",
        "alternative"}  # fmt: skip


@pytest.fixture
def runs(tmp_path: Path) -> list[str]:
    write_run(tmp_path, "sgd", evals={"best": (cases(6), one_class(DICE_A))})
    write_run(tmp_path, "hco", optimizer="sgd-hco",
              evals={"best": (cases(6), one_class(DICE_B, hd95=HD_B))})  # fmt: skip
    return [str(tmp_path / "sgd"), str(tmp_path / "hco")]


def test_class_table_layout_numbers_and_bold(runs: list[str]) -> None:
    result = compare_runs(runs)
    main, details = comparison_tables(result)
    assert main.columns[:8] == ["Arm", "Optimizer", "L/U", "Runs", "Dice (%)", "Jaccard (%)",
                                "ASD (vox)", "HD95 (vox)"]  # fmt: skip
    ref, hco = ([c.text for c in row] for row in main.rows)
    dice_a = f"{100 * DICE_A.mean():.2f} ({100 * DICE_A.std(ddof=1):.2f})"
    assert ref[:5] == ["sgd", "sgd", "4/76", "1", dice_a]
    assert ref[8:] == ["ref"] * 4
    # HCO is better on every metric: its cells are bold, the reference's are not; but its HD95
    # mean covers 5 of the 6 cases (one NaN), so that column marks no best and says so.
    assert all(c.bold for c in main.rows[1][4:7]) and not any(c.bold for c in main.rows[0])
    assert not main.rows[1][7].bold and hco[7].endswith(" (n=5)")
    p_w = sps.wilcoxon(DICE_B, DICE_A, alternative="greater").pvalue
    p_t = sps.ttest_rel(DICE_B, DICE_A, alternative="greater").pvalue
    assert hco[8] == f"{p_w:.4f} / {p_t:.4f}"
    hd_row = next(r for r in details.rows if r[3].text == "HD95")
    assert [c.text for c in hd_row[4:6]] == ["5", "1"]  # n, excluded as NaN


def test_default_caption_is_unchanged(runs: list[str]) -> None:
    main, *_ = comparison_tables(compare_runs(runs))
    assert main.caption == (
        "p: one-sided paired Wilcoxon / t-test (Wilcoxon zero_method=wilcox); H1: arm better "
        "than sgd. Dice/Jaccard in %, distances in voxels; mean (sample std, ddof=1) across 6 "
        "cases, runs of a group averaged per case first.")
    compact = comparison_tables(compare_runs(runs), compact=True)
    assert compact[2].title == "Class 1: one-sided p (Wilcoxon / t-test)"


@pytest.mark.parametrize(
    ("hypothesis", "stated", "sided", "alternative"),
    [("worse", "; H1: arm worse than sgd.", "one-sided", "less"),
     ("two-sided", "; two-sided: arm differs from sgd.", "two-sided", "two-sided")],
)
def test_captions_and_records_state_the_hypothesis(
    runs: list[str], tmp_path: Path, hypothesis: stats.Hypothesis, stated: str, sided: str,
    alternative: str,
) -> None:
    result = compare_runs(runs, hypothesis=hypothesis)
    main, _ = comparison_tables(result)
    assert stated in main.caption and "better than" not in main.caption
    assert main.caption.startswith(f"p: {'one-sided ' if sided == 'one-sided' else ''}paired")
    compact = comparison_tables(result, compact=True)
    assert compact[2].title == f"Class 1: {sided} p (Wilcoxon / t-test)"
    p_w = sps.wilcoxon(DICE_B, DICE_A, alternative=alternative).pvalue
    p_t = sps.ttest_rel(DICE_B, DICE_A, alternative=alternative).pvalue
    assert [c.text for c in main.rows[1]][8] == f"{p_w:.4f} / {p_t:.4f}"
    write_comparison(result, json_path=tmp_path / "r.json", markdown_path=tmp_path / "r.md")
    records = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [r["alternative"] for r in records] == [hypothesis] * 4
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert stated in md and "better than" not in md
    assert hypothesis != "two-sided" or "one-sided" not in md


def test_records_json_csv_markdown(runs: list[str], tmp_path: Path) -> None:
    result = compare_runs(runs, holm=True, tests=("wilcoxon",))
    out = tmp_path / "out"
    write_comparison(result, json_path=out / "r.json", csv_path=out / "r.csv",
                     markdown_path=out / "r.md")  # fmt: skip
    records = json.loads((out / "r.json").read_text(encoding="utf-8"))
    assert len(records) == 4
    assert all(KEYS | {"p_holm_wilcoxon", "p_holm_ttest"} <= set(r) for r in records)
    dice = next(r for r in records if r["metric"] == "dice")
    assert (dice["arm"], dice["reference"], dice["class"]) == ("hco", "sgd", "1")
    assert dice["mean_b"] == pytest.approx(DICE_B.mean())
    assert dice["rel_change"] == pytest.approx(DICE_B.mean() / DICE_A.mean() - 1)
    assert dice["p_ttest"] is None  # not requested: null, never NaN, in strict JSON
    assert dice["p_wilcoxon"] == sps.wilcoxon(DICE_B, DICE_A, alternative="greater").pvalue
    with (out / "r.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[0]["p_wilcoxon"]) == records[0]["p_wilcoxon"]
    md = (out / "r.md").read_text(encoding="utf-8")
    assert "### Class 1 (checkpoint best)" in md
    assert "| Arm | Optimizer | L/U |" in md
    assert f"**{100 * DICE_B.mean():.2f}" in md
    assert "Holm-adjusted" in md
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files


def test_per_seed_table_and_records(tmp_path: Path) -> None:
    """With seeds on both sides: a last table of per-seed differences (Dice in % points) and
    records of level "seed" after the per-case ones in JSON and CSV."""
    for seed, (a, b) in enumerate(((0.0, 0.02), (0.01, 0.0)), start=1):
        write_run(tmp_path / "sgd", f"s{seed}", seed=seed,
                  evals={"best": (cases(6), one_class(DICE_A + a))})
        write_run(tmp_path / "hco", f"s{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(6), one_class(DICE_A + b))})
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"])
    *_, seeds = comparison_tables(result)
    assert seeds.columns == ["Arm", "Class", "Metric", "s1", "s2", "Mean (sd)", "Better",
                             "p t-test (seeds)", "Detectable (80%)", "95% bounds"]
    dice = [c.text for c in seeds.rows[0]]
    assert dice[:5] == ["hco", "1", "Dice", "+2.00", "-1.00"]
    assert dice[5] == f"+0.50 ({np.std([2.0, -1.0], ddof=1):.2f})" and dice[6] == "1/2"
    assert dice[7] == f"{sps.ttest_1samp([0.02, -0.01], 0, alternative='greater').pvalue:.4f}"
    detectable = stats.detectable_difference(float(np.std([0.02, -0.01], ddof=1)), 2)
    assert dice[8] == f"{100 * detectable:+.2f}"
    # one-sided 95 % bounds: the ends of the 90 % t interval of the mean of +2 and -1
    low, high = sps.t.interval(0.90, 1, loc=0.5, scale=np.std([2.0, -1.0], ddof=1) / np.sqrt(2))
    assert dice[9] == f"{low:+.2f}, {high:+.2f}"
    write_comparison(result, json_path=tmp_path / "c.json", csv_path=tmp_path / "c.csv")
    records = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert [r["level"] for r in records] == ["case"] * 4 + ["seed"] * 4
    assert all(r["alternative"] == "better" for r in records)
    assert records[4]["keys"] == ["s1", "s2"] and records[4]["n_better"] == 1
    assert records[4]["bound_low_95"] == pytest.approx(low / 100)
    assert records[4]["bound_high_95"] == pytest.approx(high / 100)
    rows = list(csv.DictReader((tmp_path / "c.csv").open(encoding="utf-8")))
    assert json.loads(rows[4]["differences"]) == pytest.approx([0.02, -0.01])


def test_runs_of_one_seed_pair_as_pairs_not_seeds(tmp_path: Path) -> None:
    """The folds of one seed (a fold grid's runs, paired by their folder names) are pairs of
    runs, not seeds: the per-run table, its t-test column and the checkpoint overview say so;
    runs of distinct seeds keep "seed"."""
    for fold, (a, b) in (("L0U0-s1", (0.0, 0.02)), ("L1U1-s1", (0.01, 0.0))):
        write_run(tmp_path / "sgd", fold, seed=1, evals={"best": (cases(6), one_class(DICE_A + a))})
        write_run(tmp_path / "hco", fold, optimizer="sgd-hco", seed=1,
                  evals={"best": (cases(6), one_class(DICE_A + b))})
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"])
    assert not pairs_are_seeds(result)
    *_, pairs = comparison_tables(result)
    assert pairs.title.startswith("Per-pair differences")
    assert pairs.columns[3:6] == ["L0U0-s1", "L1U1-s1", "Mean (sd)"]
    assert "p t-test (pairs)" in pairs.columns and "pairs where the arm is better" in pairs.caption
    assert pairs.caption.startswith("Runs paired by the part of their path the arm's glob "
                                    "matched, then run.json's seed")
    assert "seed (" not in pairs.caption and "wildcards matched; " in pairs.caption
    # a fold the other arm lacks: the note names the per-pair test, as the table does
    write_run(tmp_path / "sgd", "L2U2-s1", seed=1, evals={"best": (cases(6), one_class(DICE_A))})
    notes = comparison_notes(compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]))
    assert any("L2U2-s1 without a partner in hco" in n and "the per-pair test leaves them out"
               in n for n in notes), notes
    overview = checkpoint_overview([result])
    assert "Δ per pair best" in overview[0].columns
    for seed in (1, 2):
        for arm, optimizer in (("sgd", "sgd"), ("hco", "sgd-hco")):
            write_run(tmp_path / "seeds" / arm, f"s{seed}", optimizer=optimizer, seed=seed,
                      evals={"best": (cases(6), one_class(DICE_A))})
    seeds = compare_runs([f"sgd={tmp_path}/seeds/sgd/*", f"hco={tmp_path}/seeds/hco/*"])
    assert pairs_are_seeds(seeds)
    assert "Δ per seed best" in checkpoint_overview([seeds])[0].columns
    assert comparison_tables(seeds)[-1].caption.startswith(
        "Runs paired by seed (the part of their path the arm's glob matched, then run.json's "
        "seed for the runs left, else, for a seed in several runs, what the wildcards matched); ")


@pytest.mark.parametrize(
    ("hypothesis", "stated"),
    [("better", "p: one-sided paired t-test over the seeds, which"),
     ("worse", "p: one-sided paired t-test over the seeds (H1: arm worse than the reference "
               "run), which"),
     ("two-sided", "p: two-sided paired t-test over the seeds, which")],
)
def test_per_seed_caption_states_the_hypothesis(
    tmp_path: Path, hypothesis: stats.Hypothesis, stated: str
) -> None:
    for seed, (a, b) in enumerate(((0.0, 0.02), (0.01, 0.0)), start=1):
        write_run(tmp_path / "sgd", f"s{seed}", seed=seed,
                  evals={"best": (cases(6), one_class(DICE_A + a))})
        write_run(tmp_path / "hco", f"s{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(6), one_class(DICE_A + b))})
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"],
                          hypothesis=hypothesis)
    for compact in (False, True):
        *_, seeds = comparison_tables(result, compact=compact)
        assert stated in seeds.caption
