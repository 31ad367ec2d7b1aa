"""``hco compare`` end to end through the real app, on files written into tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.evaluation.compare_tables import fmt_p
from tests.evaluation.compare_fixtures import cases, one_class, step, write_run, write_summary

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich wraps tables to the terminal width; keep rows on one line
DICE_A = np.array([0.80, 0.85, 0.90, 0.70, 0.75, 0.88, 0.81, 0.79])
DICE_B = np.array([0.84, 0.86, 0.93, 0.74, 0.78, 0.90, 0.80, 0.83])


@pytest.fixture
def arms(tmp_path: Path) -> list[str]:
    write_run(tmp_path, "sgd-s0", evals={"best": (cases(8), one_class(DICE_A))})
    for seed, shift in ((0, 0.01), (1, -0.01)):
        write_run(tmp_path, f"hco-s{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(8), one_class(DICE_B + shift))})  # fmt: skip
    return [str(tmp_path / "sgd-s0"), f"hco={tmp_path}/hco-s*"]


def _error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_table_and_outputs(arms: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["compare", *arms, "--json", str(out / "c.json"), "--csv", str(out / "c.csv"),
         "--markdown", str(out / "c.md"), "--plot", str(out / "box.png")],
        env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Class 1 (checkpoint best)" in text
    assert f"{100 * DICE_A.mean():.2f} ({100 * DICE_A.std(ddof=1):.2f})" in text
    assert f"{100 * DICE_B.mean():.2f}" in text  # the group mean of the two seeds
    p_w = sps.wilcoxon(DICE_B, DICE_A, alternative="greater").pvalue
    p_t = sps.ttest_rel(DICE_B, DICE_A, alternative="greater").pvalue
    assert f"{p_w:.4f} / {p_t:.4f}" in text
    assert "sgd-hco" in text and "4/76" in text
    records = json.loads((out / "c.json").read_text(encoding="utf-8"))
    assert {r["metric"] for r in records} == {"dice", "jaccard", "hd95", "asd"}
    assert records[0]["arm"] == "hco" and records[0]["reference"] == "sgd-s0"
    csv_text = (out / "c.csv").read_text(encoding="utf-8")
    assert csv_text.startswith("level,arm,reference,class,metric")
    assert "| Arm | Optimizer |" in (out / "c.md").read_text(encoding="utf-8")
    assert (out / "box.png").stat().st_size > 0
    assert f"wrote {out / 'c.json'}" in text


def test_single_test_holm_and_zero_method(arms: list[str], tmp_path: Path) -> None:
    target = tmp_path / "h.json"
    result = runner.invoke(
        app,
        ["compare", *arms, "--test", "wilcoxon", "--zero-method", "pratt", "--holm",
         "--json", str(target)],
        env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Holm-adjusted" in result.stdout and "zero_method=pratt" in result.stdout
    records = json.loads(target.read_text(encoding="utf-8"))
    assert all(r["p_ttest"] is None and r["p_holm_wilcoxon"] is not None for r in records)


def test_holm_over_all_implies_holm_and_says_so(arms: list[str], tmp_path: Path) -> None:
    target = tmp_path / "h.json"
    result = runner.invoke(app, ["compare", *arms, "--holm-over", "all", "--json", str(target)],
                           env=WIDE)
    assert result.exit_code == 0, result.output
    records = json.loads(target.read_text(encoding="utf-8"))
    assert "Holm-adjusted across all" in result.stdout
    assert {r["holm_family"] for r in records if r["level"] == "case"} == {"all"}


def test_alternative_worse_in_every_output(arms: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["compare", *arms, "--alternative", "worse", "--json", str(out / "c.json"),
         "--markdown", str(out / "c.md")],
        env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    p_w = sps.wilcoxon(DICE_B, DICE_A, alternative="less").pvalue
    p_t = sps.ttest_rel(DICE_B, DICE_A, alternative="less").pvalue
    assert f"{p_w:.4f} / {p_t:.4f}" in result.stdout
    assert "H1: arm worse than sgd-s0" in result.stdout
    md = (out / "c.md").read_text(encoding="utf-8")
    assert "H1: arm worse than sgd-s0" in md and "better than" not in md
    records = json.loads((out / "c.json").read_text(encoding="utf-8"))
    assert {r["alternative"] for r in records} == {"worse"}
    dice = next(r for r in records if r["metric"] == "dice")
    assert dice["p_wilcoxon"] == p_w and dice["p_ttest"] == p_t


def test_alternative_two_sided_never_says_one_sided(arms: list[str], tmp_path: Path) -> None:
    md = tmp_path / "c.md"
    result = runner.invoke(app, ["compare", *arms, "--alternative", "two-sided",
                                 "--markdown", str(md)], env=WIDE)  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in (result.stdout, md.read_text(encoding="utf-8")):
        assert "two-sided: arm differs from sgd-s0" in text and "one-sided" not in text


def test_margin_non_inferiority_in_every_output(arms: list[str], tmp_path: Path) -> None:
    """``--margin dice=2`` (% points) tests the arm against the reference minus 0.02."""
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["compare", *arms, "--margin", "dice=2", "--margin", "HD95=0.5",
         "--json", str(out / "c.json"), "--markdown", str(out / "c.md")],
        env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    p_w = sps.wilcoxon(DICE_B + 0.02, DICE_A, alternative="greater").pvalue
    p_t = sps.ttest_rel(DICE_B + 0.02, DICE_A, alternative="greater").pvalue
    assert f"{fmt_p(p_w)} / {fmt_p(p_t)}" in result.stdout
    h1 = ("H1: arm better than sgd-s0 minus the margin (non-inferiority; margins Dice 2.00 % "
          "points, HD95 0.50 voxels, 0 for the other metrics)")
    assert h1 in " ".join(result.stdout.split())
    assert h1 in (out / "c.md").read_text(encoding="utf-8")
    records = {r["metric"]: r for r in json.loads((out / "c.json").read_text(encoding="utf-8"))}
    assert records["dice"]["margin"] == pytest.approx(0.02) and records["hd95"]["margin"] == 0.5
    assert records["dice"]["p_ttest"] == pytest.approx(p_t)


def test_default_is_better(arms: list[str], tmp_path: Path) -> None:
    paths = {name: tmp_path / name for name in ("default.md", "better.md")}
    for name, extra in (("default.md", []), ("better.md", ["--alternative", "better"])):
        result = runner.invoke(app, ["compare", *arms, *extra, "--markdown", str(paths[name])],
                               env=WIDE)  # fmt: skip
        assert result.exit_code == 0, result.output
    default = paths["default.md"].read_text(encoding="utf-8")
    assert default == paths["better.md"].read_text(encoding="utf-8")
    assert ("p: one-sided paired Wilcoxon / t-test (Wilcoxon zero_method=wilcox); H1: arm "
            "better than sgd-s0.") in default


def test_several_checkpoints_side_by_side(tmp_path: Path) -> None:
    """Repeated --checkpoint: the overview puts each checkpoint's mean, paired difference, p and
    per-seed difference side by side (checked against scipy on the fixture's values), every
    JSON record names its checkpoint, and the Markdown opens with the overview."""
    last_a, last_b = DICE_A - 0.02, DICE_B + 0.01
    for seed in (1, 2):
        shift = 0.01 * seed
        write_run(tmp_path / "sgd", f"s{seed}", seed=seed,
                  evals={"best": (cases(8), one_class(DICE_A + shift)),
                         "last": (cases(8), one_class(last_a + shift))})
        write_run(tmp_path / "hco", f"s{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(8), one_class(DICE_B + shift)),
                         "last": (cases(8), one_class(last_b + shift))})
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*",
                                 "--checkpoint", "best", "--checkpoint", "last", "--test",
                                 "wilcoxon", "--json", str(out / "c.json"), "--markdown",
                                 str(out / "c.md")], env=WIDE)  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.index("Class 1: Dice by checkpoint") < text.index("Class 1 (checkpoint best)")
    assert text.index("Class 1 (checkpoint best)") < text.index("Class 1 (checkpoint last)")
    hco_row = next(line for line in text.splitlines() if line.startswith("│ hco "))
    cells = [c.strip() for c in hco_row.strip("│ ").split("│")]
    expected = ["hco", "2"]
    for a, b in ((DICE_A, DICE_B), (last_a, last_b)):
        p = sps.wilcoxon(b, a, alternative="greater").pvalue  # seeds shift both arms alike
        diff = f"{100 * (b - a).mean():+.2f}"
        expected += [f"{100 * (b.mean() + 0.015):.2f} ({100 * b.std(ddof=1):.2f})", diff,
                     fmt_p(p), f"{diff} (2/2), p {fmt_p(0.0)}"]  # equal seed differences
    assert cells == expected
    records = json.loads((out / "c.json").read_text(encoding="utf-8"))
    assert {(r["checkpoint"], r["level"]) for r in records} == {
        ("best", "case"), ("last", "case"), ("best", "seed"), ("last", "seed")}
    markdown = (out / "c.md").read_text(encoding="utf-8")
    assert markdown.startswith("### Class 1: Dice by checkpoint")
    assert "| Arm | Runs | Dice best (%) | Δ best | p best | Δ per seed best |" in markdown


def test_common_seeds_from_the_command_line(tmp_path: Path) -> None:
    """sgd a seed ahead of hco: --common-seeds drops sgd's seed 3 from the per-case tests, the
    run counts say so and the note names it (checked against scipy on seeds 1-2)."""
    for seed in (1, 2, 3):
        write_run(tmp_path / "sgd", f"s{seed}", seed=seed,
                  evals={"best": (cases(8), one_class(DICE_A + 0.01 * seed))})
    for seed in (1, 2):
        write_run(tmp_path / "hco", f"s{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(8), one_class(DICE_B + 0.01 * seed))})
    specs = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    result = runner.invoke(app, ["compare", *specs, "--common-seeds", "--test", "wilcoxon"],
                           env=WIDE)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "--common-seeds: sgd: left out s3 (a seed not in every arm)" in " ".join(text.split())
    hco_row = next(line for line in text.splitlines() if line.startswith("│ hco "))
    p = sps.wilcoxon(DICE_B, DICE_A, alternative="greater").pvalue  # seeds 1-2 shift alike
    assert fmt_p(p) in hco_row
    sgd_row = next(line for line in text.splitlines() if line.startswith("│ sgd "))
    assert f"{100 * (DICE_A.mean() + 0.015):.2f}" in sgd_row  # seeds 1-2, not 1-3
    # by default the same runs (the arms pair by seed), said as the default's cut
    default = runner.invoke(app, ["compare", *specs, "--test", "wilcoxon"], env=WIDE)
    words = " ".join(default.stdout.split())
    assert "sgd: left out s3, a seed not in every arm: the per-case tests compare" in words
    assert fmt_p(p) in next(line for line in default.stdout.splitlines()
                            if line.startswith("│ hco "))
    every = runner.invoke(app, ["compare", *specs, "--all-runs", "--test", "wilcoxon"], env=WIDE)
    assert "without a partner in hco" in " ".join(every.stdout.split())
    sgd_row = next(line for line in every.stdout.splitlines() if line.startswith("│ sgd "))
    assert f"{100 * (DICE_A.mean() + 0.02):.2f}" in sgd_row  # seeds 1-3
    both = runner.invoke(app, ["compare", *specs, "--all-runs", "--common-seeds"], env=WIDE)
    assert "--common-seeds keeps the seeds every arm has, --all-runs every run; give one" in \
        _error_line(both)


def test_a_run_summary_must_be_the_checkpoint_asked_for(tmp_path: Path) -> None:
    """RUN/eval/last/summary.json is the last iterate: compared under the default (best) it
    would be labelled as the best checkpoint, so it is refused; with --checkpoint last it is
    read. A summary outside a run names no checkpoint: --checkpoint last applies where a run's
    summary is beside it, and is refused where no arm has one."""
    for name in ("a", "b"):
        write_run(tmp_path, name, evals={"last": (cases(4), one_class([0.8, 0.7, 0.9, 0.6]))})
    files = [str(tmp_path / n / "eval" / "last" / "summary.json") for n in ("a", "b")]
    line = _error_line(runner.invoke(app, ["compare", *files], env=WIDE))
    assert "is the 'last' evaluation, not the 'best' one asked for" in line
    result = runner.invoke(app, ["compare", *files, "--checkpoint", "last"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Class 1 (checkpoint last)" in result.stdout
    bare = write_summary(tmp_path / "bare.json", cases(4), one_class([0.8, 0.7, 0.9, 0.6]))
    result = runner.invoke(app, ["compare", files[1], str(bare), "--checkpoint", "last"],
                           env=WIDE)  # the checkpoint applies to the run's summary
    assert result.exit_code == 0, result.output
    line = _error_line(runner.invoke(app, ["compare", f"a={bare}", f"b={bare}",
                                           "--checkpoint", "last"], env=WIDE))
    assert "every arm here is a summary that names no checkpoint" in line


def test_several_checkpoints_need_run_folders(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a.json", cases(4), one_class([0.8, 0.7, 0.9, 0.6]))
    write_run(tmp_path, "run", evals={"best": (cases(4), one_class([0.8] * 4)),
                                      "last": (cases(4), one_class([0.7] * 4))})
    run = str(tmp_path / "run")
    for argv, message in (
        ([run, str(a), "--checkpoint", "best", "--checkpoint", "last"],
         "a.json is a summary, which holds one evaluation"),
        ([run, run, "--checkpoint", "last", "--checkpoint", "last"], "'last' given twice"),
        ([run, run, "--checkpoint", "best", "--checkpoint", "last", "--plot",
          str(tmp_path / "p.png")], "--plot draws one checkpoint's cases"),
    ):
        line = _error_line(runner.invoke(app, ["compare", *argv], env=WIDE))
        assert line.startswith("error: ") and message in line, line


def test_dynamics_end_to_end(tmp_path: Path) -> None:
    for name, level in (("sgd", 1.0), ("hco", 1.2)):
        steps = [step(e, 3 * e + k, level + 0.01 * k) for e in range(6) for k in range(3)]
        write_run(tmp_path, name, steps=[step(0, 0, None, phase="pretrain"), *steps])
    with (tmp_path / "sgd" / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"phase": "val", "iter": 18, "epoch": 5, "dice": 0.8}) + "\n")
    out = tmp_path / "dyn"
    result = runner.invoke(
        app,
        ["compare", "--dynamics", str(tmp_path / "sgd"), str(tmp_path / "hco"),
         "--json", str(out / "d.json"), "--csv", str(out / "d.csv"),
         "--plot", str(out / "d.png"), "--lowess-frac", "0.5"],
        env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "L_U / L_L per epoch" in result.stdout
    assert "1.010 ± 0.006 (n=3)" in result.stdout
    assert "+0.200" in result.stdout and "+19.8%" in result.stdout
    data = json.loads((out / "d.json").read_text(encoding="utf-8"))
    assert len(data["epochs"]) == 12
    assert data["summary"][0]["mean_diff"] == pytest.approx(0.2)
    assert (out / "d.png").stat().st_size > 0


def test_dynamics_with_common_seeds_pools_only_the_shared_seeds(tmp_path: Path) -> None:
    """sgd seeds 1-2 at ratio 1.0 and a seed 3 at 3.0 that hco lacks: pooled (--all-runs),
    sgd's mean ratio is pulled up; with --common-seeds, and by default, it is 1.0 and the
    difference hco's 0.2."""
    for seed, level in ((1, 1.0), (2, 1.0), (3, 3.0)):
        write_run(tmp_path / "sgd", f"s{seed}", seed=seed,
                  steps=[step(e, 3 * e + k, level) for e in range(4) for k in range(3)])
    for seed in (1, 2):
        write_run(tmp_path / "hco", f"s{seed}", seed=seed, optimizer="sgd-hco",
                  steps=[step(e, 3 * e + k, 1.2) for e in range(4) for k in range(3)])
    specs = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    out = tmp_path / "d.json"
    pooled = runner.invoke(app, ["compare", "--dynamics", *specs, "--all-runs"], env=WIDE)
    assert pooled.exit_code == 0, pooled.output
    assert "-0.467" in pooled.stdout  # 1.2 against (1 + 1 + 3) / 3
    default = runner.invoke(app, ["compare", "--dynamics", *specs], env=WIDE)
    assert default.exit_code == 0, default.output
    assert "+0.200" in default.stdout
    assert "sgd: left out s3, a seed not in every arm (--all-runs pools every run)" in \
        " ".join(default.stdout.split())
    result = runner.invoke(app, ["compare", "--dynamics", *specs, "--common-seeds",
                                 "--json", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["summary"][0]["mean_diff"] == pytest.approx(0.2)
    assert data["left_out"] == {"sgd": ["s3"]}
    assert "--common-seeds: sgd: left out s3" in " ".join(result.stdout.split())


def test_one_shared_seed_pools_every_run_in_both_modes(tmp_path: Path) -> None:
    """sgd at seeds 1-3, hco at seed 1 only: one shared seed is no seed-paired study, so by
    default the per-case tests average sgd's three runs and --dynamics pools them (the same
    rule in both); --common-seeds cuts sgd to seed 1 in both."""
    for seed, level in ((1, 1.0), (2, 1.0), (3, 3.0)):
        write_run(tmp_path / "sgd", f"s{seed}", seed=seed,
                  steps=[step(e, 3 * e + k, level) for e in range(4) for k in range(3)],
                  evals={"best": (cases(8), one_class(DICE_A + 0.01 * seed))})
    write_run(tmp_path / "hco", "s1", seed=1, optimizer="sgd-hco",
              steps=[step(e, 3 * e + k, 1.2) for e in range(4) for k in range(3)],
              evals={"best": (cases(8), one_class(DICE_B + 0.01))})
    specs = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]

    def sgd_row(result: Any) -> str:
        assert result.exit_code == 0, result.output
        return next(line for line in result.stdout.splitlines() if line.startswith("│ sgd "))

    default = runner.invoke(app, ["compare", *specs, "--test", "wilcoxon"], env=WIDE)
    assert f"{100 * (DICE_A.mean() + 0.02):.2f}" in sgd_row(default)  # seeds 1-3 averaged
    common = runner.invoke(app, ["compare", *specs, "--common-seeds", "--test", "wilcoxon"],
                           env=WIDE)
    assert f"{100 * (DICE_A.mean() + 0.01):.2f}" in sgd_row(common)  # seed 1 alone
    pooled = runner.invoke(app, ["compare", "--dynamics", *specs], env=WIDE)
    assert pooled.exit_code == 0, pooled.output
    assert "-0.467" in pooled.stdout and "left out" not in pooled.stdout  # 1.2 - 5 / 3
    cut = runner.invoke(app, ["compare", "--dynamics", *specs, "--common-seeds"], env=WIDE)
    assert cut.exit_code == 0, cut.output
    assert "+0.200" in cut.stdout and "sgd: left out s2, s3" in " ".join(cut.stdout.split())


def test_curves_end_to_end(tmp_path: Path) -> None:
    """Validation curves of two arms of two seeds each, paired by seed, as the tables, JSON
    and a figure."""
    for arm, shift in (("sgd", 0.0), ("hco", 0.01)):
        for seed in (1, 2):
            records = [{"phase": "val", "train_phase": "selftrain", "iter": it, "split": "val",
                        "dice": 0.7 + 0.01 * seed + shift * k, "also": {"test": 0.6 + shift}}
                       for k, it in enumerate((200, 400, 600))]
            write_run(tmp_path, f"{arm}-s{seed}", seed=seed, steps=records)
    out = tmp_path / "curves"
    result = runner.invoke(
        app, ["compare", "--curves", f"sgd={tmp_path}/sgd-s*", f"hco={tmp_path}/hco-s*",
              "--bin", "2", "--json", str(out / "c.json"), "--plot", str(out / "c.png")],
        env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Dice on val over training (%, mean over 2 runs per arm)" in result.stdout
    assert "+0.50, +0.50: +0.50 (0.00)" in result.stdout  # iterations 200-400: (0 + 1) / 2
    summary = json.loads((out / "c.json").read_text(encoding="utf-8"))["summary"][0]
    assert summary["differences"] == pytest.approx([1.0, 1.0]) and summary["n_better"] == 2
    assert (out / "c.png").stat().st_size > 0
    test = runner.invoke(app, ["compare", "--curves", "--split", "test",
                               f"sgd={tmp_path}/sgd-s*", f"hco={tmp_path}/hco-s*"], env=WIDE)
    assert test.exit_code == 0 and "Dice on test over training" in test.stdout
    assert "+1.00, +1.00: +1.00 (0.00)" in test.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["only-one"], "at least two arms"),
        (["--curves", "--checkpoint", "last", "{tmp}/run", "{tmp}/run2"],
         "--checkpoint does not apply with --curves"),
        (["--curves", "--dynamics", "{tmp}/run", "{tmp}/run2"], "two modes"),
        (["--split", "test", "{a}", "{a}"], "--split does not apply without --curves"),
        (["--curves", "{tmp}/run", "{tmp}/run2"], "no metrics.jsonl"),
        (["{a}", "g={tmp}/none-*"], "matched nothing"),
        (["{a}", "{tmp}/bad.json"], "invalid JSON"),
        (["{a}", "{tmp}/shape.json"], "not an evaluation summary"),
        (["{a}", "{tmp}/mm.json"], "spacing units differ between arms"),
        (["{a}", "{tmp}/two.json"], "class sets differ between arms"),
        (["{a}", "{tmp}/short.json"], "use --intersect"),
        (["{tmp}/run", "{a}"], "no 'best' evaluation"),
        (["--dynamics", "{tmp}/run", "{tmp}/run2"], "no metrics.jsonl"),
        (["--dynamics", "--holm", "{tmp}/run", "{tmp}/run2"], "--holm does not apply"),
        (["--curves", "--holm-over", "all", "{tmp}/run", "{tmp}/run2"],
         "--holm-over does not apply with --curves"),
        (["{a}", "{a}", "--holm-over", "arms"], "'arms' is not one of 'metrics', 'all'"),
        (["--bin", "3", "{a}", "{a}"], "--bin does not apply without --dynamics"),
        (["{a}", "{a}", "--alternative", "less"], "'less' is not one of 'better', 'worse', "
                                                  "'two-sided'"),
        (["--dynamics", "--alternative", "worse", "{tmp}/run", "{tmp}/run2"],
         "--alternative does not apply with --dynamics"),
        (["{a}", "{tmp}/short.json", "--plot", "{tmp}/x.gif"], "unsupported format"),
        (["{a}", "{a}", "--margin", "dice"], "expected METRIC=VALUE"),
        (["{a}", "{a}", "--margin", "dice=half"], "'half' is not a number"),
        (["{a}", "{a}", "--margin", "dice=1", "--margin", "dice=2"], "dice given twice"),
        (["{a}", "{a}", "--margin", "hd=1"], "unknown metric 'hd'"),
        (["{a}", "{a}", "--margin", "dice=-1"], "finite number >= 0"),
        (["{a}", "{a}", "--margin", "dice=1", "--alternative", "two-sided"], "one-sided"),
        (["--dynamics", "--margin", "dice=1", "{tmp}/run", "{tmp}/run2"],
         "--margin does not apply with --dynamics"),
        (["--curves", "--common-seeds", "{tmp}/run", "{tmp}/run2"],
         "--common-seeds does not apply with --curves"),
        (["{a}", "{tmp}/short.json", "--common-seeds", "--intersect"],
         "matches runs by the seed in their run.json"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    a = write_summary(tmp_path / "a.json", cases(4), one_class([0.8, 0.7, 0.9, 0.6]))
    write_summary(tmp_path / "mm.json", cases(4), one_class([0.8, 0.7, 0.9, 0.6]), unit="mm")
    two = {**one_class([0.8] * 4), **one_class([0.7] * 4, cls="2")}
    write_summary(tmp_path / "two.json", cases(4), two)
    write_summary(tmp_path / "short.json", cases(3), one_class([0.8, 0.7, 0.9]))
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "shape.json").write_text(json.dumps({"metric_per_case": []}), encoding="utf-8")
    write_run(tmp_path, "run", evals={"last": (cases(4), one_class([0.8] * 4))})
    write_run(tmp_path, "run2")
    args = [x.format(a=a, tmp=tmp_path) for x in argv]
    line = _error_line(runner.invoke(app, ["compare", *args], env=WIDE))
    assert line.startswith("error: ") and message in line


def test_intersect_reports_dropped_cases(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a.json", cases(6), one_class(DICE_A[:6]))
    b = write_summary(tmp_path / "b.json", cases(6)[1:], one_class(DICE_B[1:6]))
    result = runner.invoke(app, ["compare", str(a), str(b), "--intersect"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "--intersect: paired 5 common cases; dropped a: 1" in result.stdout


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_narrow_terminals_never_cut_or_fold_a_number(width: int) -> None:
    """The committed Study 1 runs, three checkpoints side by side, on terminals of 40-100
    columns: no line is wider than the terminal (rich would crop it), and every number the
    wide layout prints appears whole in the narrow one (the columns of a table that cannot
    hold each longest word side by side are split into groups beside the arm's)."""
    root = Path(__file__).resolve().parents[2] / "results" / "la-full" / "8l"
    args = ["compare", f"sgd={root}/*/sgd/*", f"sgd-hco={root}/*/sgd-hco/*", "--checkpoint",
            "best", "--checkpoint", "last", "--checkpoint", "best-test", "--holm"]
    wide = runner.invoke(app, args, env=WIDE)
    narrow = runner.invoke(app, args, env={"COLUMNS": str(width)})
    assert wide.exit_code == 0 and narrow.exit_code == 0, narrow.output
    assert max(len(line) for line in narrow.stdout.splitlines()) <= width
    number = re.compile(r"[-+]?\d+\.\d+")
    wanted = set(number.findall(wide.stdout))
    assert len(wanted) > 100  # not vacuous
    tokens = set(re.split(r"[\s(),/;:%]+", narrow.stdout))
    assert not {n for n in wanted if n not in tokens}


def test_a_claim_is_judged_over_the_seeds_in_the_table_and_json(tmp_path: Path) -> None:
    """--claim dice=1.11 (% points): the per-seed table gains the rule's verdict column, the
    JSON its fields; a claim that is no gain, or one with --curves, is a one-line error."""
    for seed, (a, b) in enumerate(((0.0, 0.004), (0.01, 0.016), (-0.01, -0.004)), start=1):
        write_run(tmp_path / "sgd", f"all-s{seed}", seed=seed,
                  evals={"best": (cases(8), one_class(DICE_A + a))})
        write_run(tmp_path / "hco", f"all-s{seed}", seed=seed, optimizer="sgd-hco",
                  evals={"best": (cases(8), one_class(DICE_A + b))})
    arms = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    out = tmp_path / "c.json"
    result = runner.invoke(app, ["compare", *arms, "--claim", "Dice=1.11", "--json", str(out)],
                           env=WIDE)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Verdict on the claim" in text
    # gains 0.4, 0.6, 0.6 points: p 0.004 over the seeds, upper bound 0.73 < 1.11
    assert "a gain, smaller than the claimed +1.11" in text
    seeds = [r for r in json.loads(out.read_text(encoding="utf-8")) if r["level"] == "seed"]
    dice = next(r for r in seeds if r["metric"] == "dice")
    assert dice["claim"] == pytest.approx(0.0111) and dice["claim_excluded"] is True
    gains = np.array([0.4, 0.6, 0.6])
    upper = gains.mean() + sps.t.ppf(0.95, 2) * gains.std(ddof=1) / np.sqrt(3)
    assert 100 * dice["claim_upper_95"] == pytest.approx(upper)
    assert all("claim" not in r for r in seeds if r["metric"] != "dice")
    line = _error_line(runner.invoke(app, ["compare", *arms, "--claim", "dice=-1"]))
    assert "claimed gain must be a positive number" in line
    line = _error_line(runner.invoke(app, ["compare", *arms, "--claim", "dice=1", "--curves"]))
    assert line.endswith("--claim does not apply with --curves")
