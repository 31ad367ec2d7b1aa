"""scripts/ablation_standing.py on constructed rounds: the per-seed differences, the pooled
tests and the pre-registered rule, checked against values built into the runs and scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from tests.evaluation.compare_fixtures import cases, one_class, write_run
from tests.file_modules import ROOT, load_file
from tests.scripts.readme_tables import assert_readme_holds

st = load_file("scripts/ablation_standing.py", "ablation_standing")

BASE = np.array([0.80, 0.85, 0.90, 0.70, 0.75, 0.88, 0.81, 0.79])
# Mean 0, |noise| < 0.005 and all distinct, so that no two paired differences tie (scipy's
# Wilcoxon is exact then; with ties it falls back to a slow permutation).
NOISE = 0.001 * np.array([1.1, -1.3, 2.1, -2.3, 0.7, -0.9, 0.35, 0.25])
GAIN = (0.010, 0.012, 0.008)  # R1 over sgd per seed (fractions)


def _run(root: Path, rnd: int, arm: str, seed: int, best: np.ndarray, last: np.ndarray,
         step: float) -> None:
    steps = [{"phase": "selftrain", "iter": i, "step_norm": step} for i in (1, 2, 3)]
    write_run(root / f"round{rnd}" / arm, f"all-s{seed}", seed=seed, steps=steps,
              optimizer="sgd" if arm == "sgd" else "sgd-hco",
              evals={"best": (cases(8), one_class(best)), "last": (cases(8), one_class(last))})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Rounds 1-3 (seeds 1-3): sgd, the printed update 0.5 points below it, R1 above it by
    GAIN (+ zero-mean noise) and R4, 0.2 points above sgd for the best checkpoint and 0.6
    below for the last; round 1 also R3, 2 points below."""
    for seed, gain in zip((1, 2, 3), GAIN, strict=True):
        sgd = BASE + 0.001 * seed
        _run(tmp_path, seed, "sgd", seed, sgd, sgd, 1.0)
        printed = sgd - 0.005 + NOISE / 2
        _run(tmp_path, seed, "hco-printed", seed, printed, printed, 2.0)
        _run(tmp_path, seed, "hco-r1", seed, sgd + gain + NOISE, sgd + gain + NOISE, 1.5)
        _run(tmp_path, seed, "hco-r4", seed, sgd + 0.002 + NOISE, sgd - 0.006 + NOISE, 1.8)
        if seed == 1:
            _run(tmp_path, seed, "hco-r3", seed, sgd - 0.02 + NOISE, sgd - 0.02 + NOISE, 1.25)
        if seed < 3:  # region arms at two seeds, R1 below the printed update's last iterate
            printed_region = sgd - 0.004 + NOISE
            _run(tmp_path, seed, "hco-printed-region", seed, printed_region, printed_region,
                 2.0)
            _run(tmp_path, seed, "hco-r1-region", seed, sgd + NOISE, sgd - 0.005 + NOISE, 1.6)
    return tmp_path


def test_standing_and_rule(root: Path) -> None:
    lines = {line.arm: line for line in st.standing(st.find_rounds(root))}
    assert list(lines) == ["hco-printed", "hco-printed-region", "hco-r1", "hco-r1-region",
                           "hco-r3", "hco-r4"]
    r1 = lines["hco-r1"]
    assert r1.reference == "sgd" and r1.rounds == [1, 2, 3] and r1.seeds == ["s1", "s2", "s3"]
    assert r1.delta["best"] == pytest.approx([100 * g for g in GAIN], abs=1e-9)
    assert r1.mean["last"] == pytest.approx(1.0, abs=1e-9)
    assert r1.better == {"best": 3, "last": 3}
    assert r1.above_printed == {"best": [True] * 3, "last": [True] * 3}
    assert r1.r == pytest.approx([1.5] * 3)
    # Pooled over the rounds every case is GAIN's mean + noise above sgd: all 8 positive, so
    # the exact one-sided Wilcoxon p is 1/256 for each metric, and Holm over 4 gives 4/256
    # (the other metrics are monotone in Dice in these runs).
    wilcoxon, ttest = r1.p_better_cases["best"]
    assert wilcoxon == pytest.approx(4 / 256)
    diffs = np.mean(GAIN) + NOISE
    t_p = sps.ttest_1samp(diffs, 0.0, alternative="greater").pvalue
    assert ttest == pytest.approx(min(1.0, 4 * t_p), rel=1e-6)  # one p for all 4 metrics
    seeds_p = sps.ttest_1samp([100 * g for g in GAIN], 0.0, alternative="greater").pvalue
    assert r1.p_better_seeds["best"] == pytest.approx(seeds_p, rel=1e-9)
    assert r1.rule == "HCO helps"
    r4 = lines["hco-r4"]
    assert r4.mean == pytest.approx({"best": 0.2, "last": -0.6}, abs=1e-9)
    assert r4.rule == "not carried"  # the last iterate misses the 0.5-point margin
    r3 = lines["hco-r3"]  # 2 points below sgd on one seed: it could still pass with 2 more,
    # if they average above (-0.5 * 3 + 2) / 2 = +0.25
    assert r3.needs == pytest.approx({"best": 0.25, "last": 0.25}, abs=1e-9)
    assert r3.rule == ("open (1 of 3 seeds; the 2 seeds left, on average, must exceed ΔDice "
                       "+0.25 best, +0.25 last)")
    region = lines["hco-r1-region"]
    assert region.above_printed == {"best": [True, True], "last": [False, False]}
    assert region.rule.startswith("not carried (no seed left")
    assert lines["hco-printed"].rule == "-" and lines["hco-printed"].above_printed == {}
    text = st.to_markdown(list(lines.values()))
    assert "| hco-r1 | sgd | 1 (s1), 2 (s2), 3 (s3) | +1.00 (+1.00, +1.20, +0.80) |" in text
    assert "| 3 of 3 / 3 of 3 | 1.50 | HCO helps |" in text


def test_readme_table_is_what_the_committed_rounds_give() -> None:
    """README.md's short standing table is the script's output on results/ablation."""
    table = st.short_markdown(st.standing(st.find_rounds(ROOT / "results" / "ablation")))
    assert_readme_holds(st.BEGIN, st.END, table,
                        "python scripts/ablation_standing.py --readme README.md")


def test_main_writes_and_errors_in_one_line(root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert st.main([str(root), "--markdown", str(tmp_path / "s.md"),
                    "--json", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.md").read_text(encoding="utf-8").startswith("| arm | vs |")
    assert '"arm": "hco-r1"' in (tmp_path / "s.json").read_text(encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{st.BEGIN}\nold\n{st.END}\nafter\n", encoding="utf-8")
    assert st.main([str(root), "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{st.BEGIN}\n| arm | what | vs | seeds |")
    assert "| `hco-r1` | R1: the binary mask into the momentum | `sgd` | 1, 2, 3 | +1.00 |" in text
    assert text.endswith(f"{st.END}\nafter\n") and "old" not in text
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert st.main([str(empty)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no round<N> folders" in err[0]
    (tmp_path / "plain.md").write_text("no markers\n", encoding="utf-8")
    assert st.main([str(root), "--readme", str(tmp_path / "plain.md")]) == 1
    assert "no <!-- ablation-standing:begin -->" in capsys.readouterr().err
    assert (tmp_path / "plain.md").read_text(encoding="utf-8") == "no markers\n"
