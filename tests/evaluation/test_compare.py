"""Loading arms, group averaging, pairing by case and the comparison records."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from hco_cli.errors import CheckpointError, ConfigError, DataError
from hco_cli.evaluation import stats
from hco_cli.evaluation.compare import (
    SeedDifference,
    _glob_regex,
    compare_runs,
    expand_braces,
    resolve_arm,
)
from hco_cli.evaluation.compare_tables import comparison_notes
from tests.evaluation.compare_fixtures import cases, one_class, write_run, write_summary

RNG = np.random.default_rng(7)
N = 10
DICE_A = np.round(RNG.uniform(0.70, 0.90, N), 4)
DICE_B = np.round(DICE_A + RNG.uniform(-0.01, 0.05, N), 4)


def _records(result, metric: str, cls: str = "1"):  # type: ignore[no-untyped-def]
    return [r for r in result.records if r.metric == metric and r.class_ == cls]


def test_two_summaries_match_scipy(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a" / "summary.json", cases(N), one_class(DICE_A))
    b = write_summary(tmp_path / "b" / "summary.json", cases(N), one_class(DICE_B))
    result = compare_runs([str(a), str(b)])
    assert [arm.name for arm in result.arms] == ["a", "b"]
    assert len(result.records) == 4
    for metric, va, vb in [
        ("dice", DICE_A, DICE_B),
        ("hd95", 20 * (1 - DICE_A), 20 * (1 - DICE_B)),
    ]:
        (rec,) = _records(result, metric)
        alt = "greater" if metric == "dice" else "less"
        assert rec.result.p_wilcoxon == sps.wilcoxon(vb, va, alternative=alt).pvalue
        assert rec.result.p_ttest == sps.ttest_rel(vb, va, alternative=alt).pvalue
        assert rec.result.mean_diff == pytest.approx(np.mean(vb) - np.mean(va))
        assert rec.arm == "b" and rec.reference == "a" and rec.result.n == N


def test_group_is_averaged_per_case_before_the_test(tmp_path: Path) -> None:
    b1 = DICE_B + 0.02
    b2 = DICE_B - 0.04
    b2_asd = 5 * (1 - b2)
    b2_asd[3] = math.nan  # one run has no ASD for case 3: the group value is run 1's
    write_run(tmp_path, "ref-s0", evals={"best": (cases(N), one_class(DICE_A))})
    write_run(tmp_path, "hco-s0", optimizer="sgd-hco", evals={"best": (cases(N), one_class(b1))})
    write_run(
        tmp_path,
        "hco-s1",
        optimizer="sgd-hco",
        seed=1,
        evals={"best": (cases(N), one_class(b2, asd=b2_asd))},
    )
    result = compare_runs([str(tmp_path / "ref-s0"), f"hco={tmp_path}/hco-s*"])
    group = result.arms[1]
    assert group.name == "hco" and group.n_runs == 2 and group.optimizer == "sgd-hco"
    expected = (b1 + b2) / 2
    np.testing.assert_allclose(group.values[("1", "dice")], expected, rtol=0, atol=1e-12)
    asd = (5 * (1 - b1) + b2_asd) / 2
    asd[3] = 5 * (1 - b1[3])
    np.testing.assert_allclose(group.values[("1", "asd")], asd, rtol=0, atol=1e-12)
    (rec,) = _records(result, "dice")
    assert rec.result.p_wilcoxon == sps.wilcoxon(expected, DICE_A, alternative="greater").pvalue
    assert rec.result.mean_b == pytest.approx(np.mean(expected))
    (rec_asd,) = _records(result, "asd")
    assert rec_asd.result.n == N and rec_asd.result.n_excluded == 0


def test_nan_cases_are_excluded_per_metric(tmp_path: Path) -> None:
    hd_a = 20 * (1 - DICE_A)
    hd_b = 20 * (1 - DICE_B)
    hd_a[0] = math.nan
    hd_b[5] = math.nan
    a = write_summary(tmp_path / "a.json", cases(N), one_class(DICE_A, hd95=hd_a))
    b = write_summary(tmp_path / "b.json", cases(N), one_class(DICE_B, hd95=hd_b))
    result = compare_runs([str(a), str(b)])
    (hd,) = _records(result, "hd95")
    (dice,) = _records(result, "dice")
    assert (hd.result.n, hd.result.n_excluded) == (N - 2, 2)
    assert (dice.result.n, dice.result.n_excluded) == (N, 0)
    keep = [i for i in range(N) if i not in (0, 5)]
    assert hd.result.p_ttest == sps.ttest_rel(hd_b[keep], hd_a[keep], alternative="less").pvalue
    # The per-arm summary uses every finite case of that arm.
    assert result.summary(result.arms[0], "1", "hd95")[2] == N - 1


def test_holm_per_arm_and_class(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a.json", cases(N), one_class(DICE_A))
    b = write_summary(tmp_path / "b.json", cases(N), one_class(DICE_B))
    result = compare_runs([str(a), str(b)], holm=True)
    raw = [r.result.p_ttest for r in result.records]
    adjusted = [r.p_holm_ttest for r in result.records]
    order = np.argsort(raw)
    hand = np.minimum(1.0, np.maximum.accumulate(np.array(raw)[order] * np.arange(4, 0, -1)))
    np.testing.assert_allclose(np.array(adjusted)[order], hand, rtol=1e-12)
    assert (
        result.records[0].as_dict()["p_holm_wilcoxon"]
        == stats.holm([r.result.p_wilcoxon for r in result.records])[0]
    )
    assert "p_holm_ttest" not in compare_runs([str(a), str(b)]).records[0].as_dict()


@pytest.mark.parametrize(
    ("hypothesis", "dice_alt", "hd95_alt"),
    [("worse", "less", "greater"), ("two-sided", "two-sided", "two-sided")],
)
def test_hypothesis_reaches_every_case_test_and_holm(
    tmp_path: Path, hypothesis: stats.Hypothesis, dice_alt: str, hd95_alt: str
) -> None:
    a = write_summary(tmp_path / "a.json", cases(N), one_class(DICE_A))
    b = write_summary(tmp_path / "b.json", cases(N), one_class(DICE_B))
    result = compare_runs([str(a), str(b)], holm=True, hypothesis=hypothesis)
    assert result.hypothesis == hypothesis
    for metric, alt, va, vb in [("dice", dice_alt, DICE_A, DICE_B),
                                ("hd95", hd95_alt, 20 * (1 - DICE_A), 20 * (1 - DICE_B))]:
        (rec,) = _records(result, metric)
        assert rec.result.p_wilcoxon == sps.wilcoxon(vb, va, alternative=alt).pvalue
        assert rec.result.p_ttest == sps.ttest_rel(vb, va, alternative=alt).pvalue
        assert rec.as_dict()["alternative"] == hypothesis
    assert [r.p_holm_ttest for r in result.records] == stats.holm(
        [r.result.p_ttest for r in result.records])
    with pytest.raises(ConfigError, match="unknown alternative 'greater'"):
        compare_runs([str(a), str(b)], hypothesis="greater")  # type: ignore[arg-type]


def test_three_arms_each_against_the_first(tmp_path: Path) -> None:
    paths = [
        str(write_summary(tmp_path / f"{n}.json", cases(N), one_class(d)))
        for n, d in [("x", DICE_A), ("y", DICE_B), ("z", DICE_B + 0.01)]
    ]
    result = compare_runs([f"base={paths[0]}", f"co={paths[1]}", f"hco={paths[2]}"])
    assert {(r.arm, r.reference) for r in result.records} == {("co", "base"), ("hco", "base")}
    assert len(result.records) == 8


def test_holm_over_all_tests_of_the_comparison(tmp_path: Path) -> None:
    """holm_family='all': one Holm family over both arms' 8 tests (the step-down by hand);
    'metrics': one per arm, so each arm's adjusted p-values are at most the 'all' ones."""
    paths = [
        str(write_summary(tmp_path / f"{n}.json", cases(N), one_class(d)))
        for n, d in [("x", DICE_A), ("y", DICE_B), ("z", DICE_B + 0.01)]
    ]
    specs = [f"base={paths[0]}", f"co={paths[1]}", f"hco={paths[2]}"]
    every = compare_runs(specs, holm=True, holm_family="all")
    raw = np.array([r.result.p_ttest for r in every.records])
    order = np.argsort(raw)
    hand = np.minimum(1.0, np.maximum.accumulate(raw[order] * np.arange(8, 0, -1)))
    np.testing.assert_allclose(np.array([r.p_holm_ttest for r in every.records])[order], hand,
                               rtol=1e-12)
    assert {r.as_dict()["holm_family"] for r in every.records} == {"all"}
    per_arm = compare_runs(specs, holm=True)
    for arm in ("co", "hco"):
        mine = [r for r in per_arm.records if r.arm == arm]
        assert [r.p_holm_ttest for r in mine] == stats.holm([r.result.p_ttest for r in mine])
    pairs = list(zip(per_arm.records, every.records, strict=True))
    assert all(a.p_holm_wilcoxon <= b.p_holm_wilcoxon for a, b in pairs)  # type: ignore[operator]
    assert any(a.p_holm_ttest != b.p_holm_ttest for a, b in pairs)
    with pytest.raises(ConfigError, match="unknown Holm family 'arms'"):
        compare_runs(specs, holm=True, holm_family="arms")


def test_case_sets_must_match_unless_intersect(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a.json", cases(N), one_class(DICE_A))
    b = write_summary(tmp_path / "b.json", cases(N)[2:], one_class(DICE_B[2:]))
    with pytest.raises(DataError, match=r"lacks 2 case\(s\) \(case00, case01\).*--intersect"):
        compare_runs([str(a), str(b)])
    result = compare_runs([str(a), str(b)], intersect=True)
    assert result.n_cases == N - 2
    assert result.dropped_cases == {"a": 2, "b": 0}
    (rec,) = _records(result, "dice")
    assert rec.result.p_ttest == sps.ttest_rel(DICE_B[2:], DICE_A[2:], alternative="greater").pvalue


def test_mismatched_classes_and_units(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a.json", cases(N), one_class(DICE_A))
    two = {**one_class(DICE_B), **one_class(DICE_B, cls="2")}
    b = write_summary(tmp_path / "b.json", cases(N), two)
    with pytest.raises(DataError, match="class sets differ between arms"):
        compare_runs([str(a), str(b)])
    mm = write_summary(tmp_path / "mm.json", cases(N), one_class(DICE_B), unit="mm")
    with pytest.raises(DataError, match="spacing units differ between arms"):
        compare_runs([str(a), str(mm)])


def test_multi_class_records(tmp_path: Path) -> None:
    a = write_summary(
        tmp_path / "a.json", cases(N), {**one_class(DICE_A), **one_class(DICE_A, cls="2")}
    )
    b = write_summary(
        tmp_path / "b.json", cases(N), {**one_class(DICE_B), **one_class(DICE_A - 0.1, cls="2")}
    )
    result = compare_runs([str(a), str(b)])
    assert result.classes == ("1", "2")
    (worse,) = _records(result, "dice", cls="2")
    assert worse.result.p_wilcoxon > 0.99 and worse.result.mean_diff == pytest.approx(-0.1)


def test_checkpoint_choice_and_missing_checkpoint(tmp_path: Path) -> None:
    write_run(tmp_path, "a", evals={"best": (cases(N), one_class(DICE_A)),
                                    "last": (cases(N), one_class(DICE_B))})  # fmt: skip
    write_run(tmp_path, "b", labeled=8, unlabeled=72,
              evals={"last": (cases(N), one_class(DICE_B))})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"no 'best' evaluation .*available: last"):
        compare_runs([str(tmp_path / "a"), str(tmp_path / "b")])
    result = compare_runs([str(tmp_path / "a"), str(tmp_path / "b")], checkpoint="last")
    assert result.arms[1].labeled_unlabeled == "8/72" and result.arms[0].optimizer == "sgd"
    (rec,) = _records(result, "dice")
    assert rec.result.mean_diff == 0.0  # both read eval/last: identical values
    write_run(tmp_path, "c")
    with pytest.raises(CheckpointError, match=r"write it with hco predict .*c --evaluate"):
        compare_runs([str(tmp_path / "a"), str(tmp_path / "c")])


def test_summary_inside_a_run_reads_run_json(tmp_path: Path) -> None:
    write_run(tmp_path, "r", optimizer="adamw-hco", labeled=5, unlabeled=150,
              evals={"last": (cases(N), one_class(DICE_A))})  # fmt: skip
    other = write_summary(tmp_path / "plain.json", cases(N), one_class(DICE_B))
    result = compare_runs([str(tmp_path / "r" / "eval" / "last" / "summary.json"), str(other)],
                          checkpoint="last")
    first, second = result.arms
    assert (first.name, first.optimizer, first.labeled_unlabeled) == ("r", "adamw-hco", "5/150")
    assert (second.optimizer, second.labeled_unlabeled) == ("-", "-")


def test_the_optimizer_column_tells_readings_and_learning_rates_apart(tmp_path: Path) -> None:
    """The printed SGD-HCO and its reading R1 share a name; their options tell them apart.
    The learning rate joins the label only where the arms were not trained at one rate (an
    equal-step control)."""
    values = {"best": (cases(N), one_class(DICE_A))}
    write_run(tmp_path, "sgd", evals=values, optimizer_config={"lr": 0.01})
    write_run(tmp_path, "printed", optimizer="sgd-hco", evals=values,
              optimizer_config={"lr": 0.01, "options": {}})
    write_run(tmp_path, "r1", optimizer="sgd-hco", evals=values,
              optimizer_config={"lr": 0.01, "options": {"refine_mask": "binary"}})
    write_run(tmp_path, "sgd-x2", evals=values, optimizer_config={"lr": 0.02})
    arms = {str(tmp_path / n): None for n in ("sgd", "printed", "r1")}
    result = compare_runs(list(arms))
    assert [a.optimizer for a in result.arms] == ["sgd", "sgd-hco",
                                                  "sgd-hco (refine_mask=binary)"]
    result = compare_runs([*arms, str(tmp_path / "sgd-x2")])
    assert [a.optimizer for a in result.arms] == [
        "sgd (lr=0.01)", "sgd-hco (lr=0.01)", "sgd-hco (lr=0.01, refine_mask=binary)",
        "sgd (lr=0.02)"]


def test_a_rate_left_to_the_default_equals_the_same_rate_given(tmp_path: Path) -> None:
    """An arm whose config leaves lr to SGD's default (0.01) trained at the rate another arm
    gives explicitly: no rate in the labels; beside a control at another rate, the default is
    named with its value."""
    values = {"best": (cases(N), one_class(DICE_A))}
    write_run(tmp_path, "unset", evals=values, optimizer_config={"lr": None})
    write_run(tmp_path, "given", evals=values, optimizer_config={"lr": 0.01})
    write_run(tmp_path, "x2", evals=values, optimizer_config={"lr": 0.02})
    pair = [str(tmp_path / "unset"), str(tmp_path / "given")]
    assert [a.optimizer for a in compare_runs(pair).arms] == ["sgd", "sgd"]
    assert [a.optimizer for a in compare_runs([*pair, str(tmp_path / "x2")]).arms] == [
        "sgd (lr=default 0.01)", "sgd (lr=0.01)", "sgd (lr=0.02)"]


def _with(path: Path, **keys: object) -> Path:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, **keys}), encoding="utf-8")
    return path


def test_summary_recording_its_checkpoint_is_held_to_it(tmp_path: Path) -> None:
    # hco predict --out X --evaluate writes X/../summary.json with the checkpoint it scored
    last = _with(write_summary(tmp_path / "tta" / "summary.json", cases(N), one_class(DICE_B)),
                 checkpoint="last")
    write_run(tmp_path, "r", evals={"best": (cases(N), one_class(DICE_A)),
                                    "last": (cases(N), one_class(DICE_A))})  # fmt: skip
    with pytest.raises(ConfigError, match=r"is the 'last' evaluation, not the 'best' one "
                                          r"asked for: compare with --checkpoint last$"):
        compare_runs([str(tmp_path / "r"), str(last)])
    with pytest.raises(ConfigError, match="is the 'last' evaluation"):  # its folder too
        compare_runs([str(tmp_path / "r"), str(last.parent)])
    result = compare_runs([str(tmp_path / "r"), str(last)], checkpoint="last")
    (rec,) = _records(result, "dice")
    assert rec.result.mean_diff == pytest.approx(float(np.mean(DICE_B) - np.mean(DICE_A)))
    # two summaries that name "last" compare under --checkpoint last
    other = _with(write_summary(tmp_path / "o.json", cases(N), one_class(DICE_A)),
                  checkpoint="last")
    compare_runs([str(last), str(other)], checkpoint="last")
    # an ensemble of checkpoints, or a file hco evaluate wrote, names none
    ens = _with(write_summary(tmp_path / "e.json", cases(N), one_class(DICE_A)),
                checkpoint="best+last")
    compare_runs([str(tmp_path / "r"), str(ens)])
    with pytest.raises(ConfigError, match="names no checkpoint"):
        compare_runs([str(ens), str(write_summary(tmp_path / "p.json", cases(N),
                                                  one_class(DICE_B)))], checkpoint="last")


def test_empty_mask_conventions_are_not_mixed(tmp_path: Path) -> None:
    bcp = _with(write_summary(tmp_path / "bcp.json", cases(N), one_class(DICE_A)),
                empty_policy="bcp")
    nan = _with(write_summary(tmp_path / "nan.json", cases(N), one_class(DICE_B)),
                empty_policy="nan")
    nan2 = _with(write_summary(tmp_path / "nan2.json", cases(N), one_class(DICE_A)),
                 empty_policy="nan")
    with pytest.raises(DataError, match=r"empty-mask conventions \(hco evaluate --empty\) "
                                        r"differ between arms: .* has --empty nan, .* has "
                                        r"--empty bcp"):
        compare_runs([str(nan), str(bcp)])
    with pytest.raises(DataError, match=r"empty-mask conventions .* differ within arm 'mix'"):
        compare_runs([f"mix={tmp_path}/{{bcp,nan}}.json", str(nan2)])
    result = compare_runs([str(nan), str(nan2)])
    assert [a.empty_policy for a in result.arms] == ["nan", "nan"]
    # a summary that records no convention (written elsewhere) goes with either
    plain = write_summary(tmp_path / "plain.json", cases(N), one_class(DICE_B))
    assert compare_runs([str(plain), str(bcp)]).arms[1].empty_policy == "bcp"
    with pytest.raises(DataError, match="empty_policy must be one of"):
        compare_runs([str(_with(plain, empty_policy="zero")), str(bcp)])


def test_arm_resolution_errors(tmp_path: Path) -> None:
    a = write_summary(tmp_path / "a.json", cases(N), one_class(DICE_A))
    with pytest.raises(ConfigError, match="at least two arms"):
        compare_runs([str(a)])
    with pytest.raises(DataError, match="matched nothing"):
        compare_runs([str(a), f"g={tmp_path}/nothing-*"])
    with pytest.raises(DataError, match="no such run folder or summary file"):
        compare_runs([str(a), str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="given twice"):
        compare_runs([f"x={a}", f"x={a}"])
    assert resolve_arm(f"{tmp_path}/*.json").members == (a,)


def _seeded(root: Path, arm: str, shifts: dict[str, float], *, optimizer: str = "sgd",
            seed_offset: int = 0, nan_case: int | None = None) -> None:
    """Runs ARM/all-sN whose Dice is DICE_A + shift (one NaN HD95 case if asked)."""
    for key, shift in shifts.items():
        dice = DICE_A + shift
        hd95 = 20 * (1 - dice)
        if nan_case is not None:
            hd95[nan_case] = math.nan
        seed = int(key.rsplit("s", 1)[1]) + seed_offset
        write_run(root / arm, key, optimizer=optimizer, seed=seed,
                  evals={"best": (cases(N), one_class(dice, hd95=hd95))})


def test_per_seed_differences_pair_runs_by_the_glob_match(tmp_path: Path) -> None:
    """Keys come from the glob's wildcard part, so an A/A arm whose run.json seeds differ
    (seed_offset) still pairs with the reference run of its folder; the t-test is scipy's
    one-sample test of the per-seed differences."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.01})
    _seeded(tmp_path, "aa", {"all-s1": 0.02, "all-s2": 0.0, "all-s3": 0.005}, seed_offset=1000)
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"aa={tmp_path}/aa/*"])
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("all-s1", "all-s2", "all-s3")
    expected = np.array([0.02, -0.01, 0.015])
    assert np.allclose(dice.differences, expected, atol=1e-12)
    assert dice.mean == pytest.approx(expected.mean())
    assert dice.std == pytest.approx(expected.std(ddof=1))
    assert dice.n_better == 2
    assert dice.p_ttest == pytest.approx(
        sps.ttest_1samp(expected, 0.0, alternative="greater").pvalue)
    (hd95,) = [d for d in result.seed_differences if d.metric == "hd95"]
    assert np.allclose(hd95.differences, -20 * expected) and hd95.n_better == 2
    assert hd95.p_ttest == pytest.approx(dice.p_ttest)  # lower is better: the same evidence
    (note,) = comparison_notes(result)  # the pairing by folder over differing seeds is said
    assert note.startswith("aa: paired with sgd by the runs' folder names although their "
                           "run.json seeds differ (all-s1: seed 1 / seed 1001, all-s2: seed 2 /")


def _record_preparation(run: Path, **digests: str) -> None:
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    info["dataset_identity"] = {"labels": "a", "splits": "b", "preprocessing": "c",
                                "cases": "d", **digests}
    (run / "run.json").write_text(json.dumps(info), encoding="utf-8")


def test_runs_of_another_preparation_of_the_dataset_are_noted(tmp_path: Path) -> None:
    """One sgd-hco seed trained after the dataset was prepared again (other cases under the
    same ids): the comparison says which runs trained on which preparation; a run from before
    identities (seed 3 of sgd) is left out of the count; one preparation says nothing."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.01})
    _seeded(tmp_path, "hco", {"all-s1": 0.0, "all-s2": 0.0, "all-s3": 0.0})
    for arm in ("sgd", "hco"):
        for key in ("all-s1", "all-s2"):
            _record_preparation(tmp_path / arm / key)
    _record_preparation(tmp_path / "hco" / "all-s3", cases="e")
    specs = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    (note,) = [n for n in comparison_notes(compare_runs(specs)) if "preparations" in n]
    assert note == ("the runs trained on 2 preparations of their dataset (their cases differ): "
                    "sgd: all-s1 #1, all-s2 #1; hco: all-s1 #1, all-s2 #1, all-s3 #2; the arms "
                    "then differ in their data as well as in what the comparison names")
    _record_preparation(tmp_path / "hco" / "all-s3")
    assert not [n for n in comparison_notes(compare_runs(specs)) if "preparations" in n]
    (tmp_path / "hco" / "all-s3" / "run.json").write_text(json.dumps(
        {**json.loads((tmp_path / "hco" / "all-s3" / "run.json").read_text()),
         "dataset_identity": ["a"]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"run.json: dataset_identity: expected an object"):
        compare_runs(specs)


def test_a_seed_rerun_in_another_session_still_pairs_by_its_seed(tmp_path: Path) -> None:
    """Seeds 1-2 of both arms share session folders; seed 3 ran in two sessions (one per
    arm): the keys pair seeds 1-2 and run.json pairs seed 3, so the per-seed test has three
    seeds (not two, with seed 3 named unpaired)."""
    _seeded(tmp_path / "s12", "sgd", {"all-s1": 0.0, "all-s2": 0.01})
    _seeded(tmp_path / "s12", "hco", {"all-s1": 0.02, "all-s2": 0.0}, optimizer="sgd-hco")
    _seeded(tmp_path / "s3", "sgd", {"all-s3": -0.01})
    _seeded(tmp_path / "s4", "hco", {"all-s3": 0.005}, optimizer="sgd-hco")
    result = compare_runs([f"sgd={tmp_path}/*/sgd/*", f"hco={tmp_path}/*/hco/*"])
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("s12/all-s1", "s12/all-s2", "seed 3")
    assert np.allclose(dice.differences, [0.02, -0.01, 0.015], atol=1e-12)
    assert dice.p_ttest == pytest.approx(
        sps.ttest_1samp([0.02, -0.01, 0.015], 0.0, alternative="greater").pvalue)
    assert comparison_notes(result) == []
    # Not vacuous: a seed the keys already paired is not paired a second time.
    _seeded(tmp_path / "s5", "hco", {"all-s1": 0.0}, optimizer="sgd-hco")
    _seeded(tmp_path / "s6", "sgd", {"all-s1": 0.0})
    result = compare_runs([f"sgd={tmp_path}/*/sgd/*", f"hco={tmp_path}/*/hco/*"])
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("s12/all-s1", "s12/all-s2", "seed 3")
    assert [n.split(" without")[0] for n in comparison_notes(result)] == ["sgd: s6/all-s1",
                                                                          "hco: s5/all-s1"]


def test_common_seeds_keeps_the_runs_of_the_seeds_every_arm_has(tmp_path: Path) -> None:
    """sgd has seeds 1-3, hco seeds 1-2 (a study under way): with every run (common_seeds
    False) the per-case tests average sgd's seed 3 in (with a note); with common_seeds each arm
    keeps seeds 1-2, so the per-case values are the two seeds' means, and the note names what
    was left out; by default (the arms pair by seed) the same cut, said as the default's."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.03})
    _seeded(tmp_path, "hco", {"all-s1": 0.02, "all-s2": 0.0}, optimizer="sgd-hco")
    specs = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    mixed = compare_runs(specs, common_seeds=False)
    (record,) = [r for r in mixed.records if r.metric == "dice"]
    assert record.result.mean_a == pytest.approx(np.mean(DICE_A) - 0.02 / 3)
    assert any("all-s3 without a partner in hco" in n for n in comparison_notes(mixed))
    like = compare_runs(specs, common_seeds=True)
    (record,) = [r for r in like.records if r.metric == "dice"]
    assert record.result.mean_a == pytest.approx(np.mean(DICE_A) + 0.005)
    assert record.result.mean_b == pytest.approx(np.mean(DICE_A) + 0.01)
    assert like.arms[0].n_runs == 2 and like.left_out == {"sgd": ["all-s3"]}
    assert comparison_notes(like) == [
        "--common-seeds: sgd: left out all-s3 (a seed not in every arm)"]
    (dice,) = [d for d in like.seed_differences if d.metric == "dice"]
    assert np.allclose(dice.differences, [0.02, -0.01], atol=1e-12)
    default = compare_runs(specs)
    assert default.left_out == {"sgd": ["all-s3"]} and default.left_out_auto
    assert not like.left_out_auto
    (record,) = [r for r in default.records if r.metric == "dice"]
    assert record.result.mean_a == pytest.approx(np.mean(DICE_A) + 0.005)
    assert comparison_notes(default) == [
        "sgd: left out all-s3, a seed not in every arm: the per-case tests compare the seeds "
        "all arms have, as the per-seed test pairs them (--all-runs averages every run in)"]
    # nothing to leave out: the same comparison as without the option
    both = [f"sgd={tmp_path}/sgd/all-s[12]", f"hco={tmp_path}/hco/*"]
    assert compare_runs(both, common_seeds=True).left_out == {}
    assert compare_runs(both).left_out == {}


def test_the_default_keeps_every_run_where_seeds_do_not_pair_the_arms(tmp_path: Path) -> None:
    """An A/A arm with offset seeds pairs by folder name, one run more than sgd: the default
    cannot match it by seed, so it keeps every run (noting the one without a partner)."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01})
    _seeded(tmp_path, "aa", {"all-s1": 0.01, "all-s2": 0.0, "all-s3": 0.02}, seed_offset=100)
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"aa={tmp_path}/aa/*"])
    assert result.left_out == {} and result.arms[1].n_runs == 3
    assert any("all-s3 without a partner in sgd" in n for n in comparison_notes(result))


def test_common_seeds_refuses_what_seeds_cannot_match(tmp_path: Path) -> None:
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01})
    _seeded(tmp_path, "hco", {"all-s3": 0.0}, optimizer="sgd-hco")
    with pytest.raises(ConfigError, match="--common-seeds: the arms share no seed"):
        compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"], common_seeds=True)
    _seeded(tmp_path, "twice", {"a-s1": 0.0, "b-s1": 0.01})  # folds of one seed
    with pytest.raises(ConfigError, match=r"one run per seed; arm 'twice' has seed 1 in a-s1, "
                                          r"b-s1"):
        compare_runs([f"sgd={tmp_path}/sgd/*", f"twice={tmp_path}/twice/*"], common_seeds=True)
    write_summary(tmp_path / "bare" / "summary.json", cases(N), one_class(DICE_A))
    with pytest.raises(ConfigError, match=r"matches runs by the seed in their run\.json; .*bare"):
        compare_runs([f"sgd={tmp_path}/sgd/*", f"bare={tmp_path}/bare/summary.json"],
                     common_seeds=True)


@pytest.mark.parametrize(("hypothesis", "alternative"),
                         [("better", "greater"), ("worse", "less"), ("two-sided", "two-sided")])
def test_per_seed_t_test_follows_the_hypothesis(
    tmp_path: Path, hypothesis: stats.Hypothesis, alternative: str
) -> None:
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.01})
    _seeded(tmp_path, "aa", {"all-s1": 0.02, "all-s2": 0.0, "all-s3": 0.005})
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"aa={tmp_path}/aa/*"],
                          hypothesis=hypothesis)
    by_metric = {d.metric: d for d in result.seed_differences}
    expected = np.array([0.02, -0.01, 0.015])
    assert by_metric["dice"].p_ttest == pytest.approx(
        sps.ttest_1samp(expected, 0.0, alternative=alternative).pvalue)
    assert by_metric["hd95"].p_ttest == pytest.approx(by_metric["dice"].p_ttest)
    assert by_metric["dice"].n_better == 2  # seeds where the arm is better, whatever H1
    assert by_metric["dice"].as_dict()["alternative"] == hypothesis


def test_a_nan_in_one_seed_of_a_case_is_averaged_around_and_said(tmp_path: Path) -> None:
    """An empty prediction in seed 1 only (HD95 NaN in case 0): the arm's case 0 is the mean of
    seeds 2-3 (the groups' NaN-aware average), and a note counts the value left out; where
    every seed is NaN in the case, the case is excluded from the test and no note is needed."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.01})
    _seeded(tmp_path, "hco", {"all-s2": 0.02, "all-s3": 0.0}, optimizer="sgd-hco")
    _seeded(tmp_path, "hco", {"all-s1": 0.01}, optimizer="sgd-hco", nan_case=0)
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"])
    (hd95,) = _records(result, "hd95")
    hco = result.arms[1]
    assert hco.values[("1", "hd95")][0] == pytest.approx(20 * (1 - DICE_A[0] - 0.01))
    assert hd95.result.n == N and hd95.result.n_excluded == 0
    assert hco.partial_nan == {("1", "hd95"): 1} and result.arms[0].partial_nan == {}
    (note,) = [n for n in comparison_notes(result) if "NaN" in n]
    assert note.startswith("hco: run values NaN (an empty mask) in cases that other runs of "
                           "the arm score (HD95 1);")
    # Not vacuous: NaN in every seed of the case leaves it out of the test, without the note.
    for key in ("all-s2", "all-s3"):
        shutil.rmtree(tmp_path / "hco" / key)
    _seeded(tmp_path, "hco", {"all-s2": 0.02, "all-s3": 0.0}, optimizer="sgd-hco", nan_case=0)
    result = compare_runs([f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"])
    (hd95,) = _records(result, "hd95")
    assert hd95.result.n_excluded == 1 and result.arms[1].partial_nan == {}
    assert not [n for n in comparison_notes(result) if "NaN" in n]


def test_per_seed_differences_fall_back_to_run_json_seeds(tmp_path: Path) -> None:
    """Folders named differently (a-s1 vs b-s1 under other globs): paired by run.json seed;
    a NaN case is left out of that seed's mean only."""
    for seed, shift in ((1, 0.0), (2, 0.01)):
        write_run(tmp_path, f"sgd-run{seed}", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A + shift))})
        hd95 = 20 * (1 - (DICE_A + shift + 0.01))
        hd95[0] = math.nan
        write_run(tmp_path, f"hco-seed{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A + shift + 0.01, hd95=hd95))})
    result = compare_runs([f"{tmp_path}/sgd-run*", f"{tmp_path}/hco-seed*"])
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("seed 1", "seed 2")
    assert np.allclose(dice.differences, 0.01) and dice.n_better == 2
    (hd95,) = [d for d in result.seed_differences if d.metric == "hd95"]
    assert np.allclose(hd95.differences, -0.2)  # the 9 finite cases of each seed


def test_a_seed_run_twice_is_named_and_not_paired(tmp_path: Path) -> None:
    """Pooled across rounds, an arm can hold one seed twice (here seed 1 as sgd-r1 and sgd-r6):
    the runs are still averaged per case, the seeds are not paired, and a note says so; the
    other arm, one run per seed, is not named."""
    for name, seed, shift in (("sgd-r1", 1, 0.0), ("sgd-r6", 1, 0.02), ("sgd-r2", 2, 0.01)):
        write_run(tmp_path, name, seed=seed, evals={"best": (cases(N), one_class(DICE_A + shift))})
    for seed in (1, 2):
        write_run(tmp_path, f"hco-seed{seed}", optimizer="sgd-hco", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A + 0.01))})
    result = compare_runs([f"{tmp_path}/sgd-r*", f"{tmp_path}/hco-seed*"])
    assert result.seed_differences == []
    (dice,) = [r for r in result.records if r.metric == "dice"]
    assert dice.result.mean_a == pytest.approx(float(np.mean(DICE_A)) + 0.01)  # three runs
    (note,) = comparison_notes(result)
    assert note.startswith(f"{tmp_path}/sgd-r*: a seed in more than one run (seed 1: ")
    assert "sgd-r1" in note and "sgd-r6" in note and "sgd-r2" not in note
    # Not vacuous: one run per seed pairs by seed and says nothing.
    (tmp_path / "sgd-r6").rename(tmp_path / "elsewhere")
    result = compare_runs([f"{tmp_path}/sgd-r*", f"{tmp_path}/hco-seed*"])
    assert result.seed_differences and comparison_notes(result) == []


def test_rounds_pooled_by_a_glob_pair_by_what_the_wildcards_matched(tmp_path: Path) -> None:
    """Two rounds of seeds 1 and 2 (each seed twice per arm, so run.json cannot pair them),
    arms told apart by the literal part of the folder name: the runs pair by round and seed;
    a round whose seeds disagree with the other arm's leaves them unpaired, with the note."""
    shifts = {("2", 1): 0.01, ("2", 2): -0.02, ("3", 1): 0.03, ("3", 2): 0.0}
    for (round_, seed), shift in shifts.items():
        root = tmp_path / f"round{round_}-x"
        write_run(root, f"eager-s{seed}", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A + 0.01 * seed))})
        write_run(root, f"graphs-s{seed}", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A + 0.01 * seed + shift))})
    arms = [f"eager={tmp_path}/round[23]-x/eager-s*", f"graphs={tmp_path}/round?-x/graphs-s?"]
    result = compare_runs(arms)
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("2/1", "2/2", "3/1", "3/2")
    assert np.allclose(dice.differences, [0.01, -0.02, 0.03, 0.0], atol=1e-12)
    assert comparison_notes(result) == []
    # Not vacuous: with round 3's graphs seeds swapped in run.json, the pairing is refused.
    for seed in (1, 2):
        shutil.rmtree(tmp_path / "round3-x" / f"graphs-s{seed}")
        write_run(tmp_path / "round3-x", f"graphs-s{seed}", seed=3 - seed,
                  evals={"best": (cases(N), one_class(DICE_A))})
    result = compare_runs(arms)
    assert result.seed_differences == [] and len(comparison_notes(result)) == 2


def test_runs_without_a_partner_are_named(tmp_path: Path) -> None:
    """A reference glob that spans one round too many (seed 1 twice, once in a round the other
    arm lacks): the other rounds pair, the extra run is averaged in per case and left out of
    the per-seed test, and a note names it."""
    for round_, seed in (("1", 1), ("2", 2), ("3", 3), ("7", 1)):
        write_run(tmp_path / f"round{round_}" / "sgd", f"all-s{seed}", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A + 0.01 * int(round_)))})
    for round_ in ("1", "2", "3"):
        write_run(tmp_path / f"round{round_}" / "hco", f"all-s{round_}", optimizer="sgd-hco",
                  seed=int(round_), evals={"best": (cases(N), one_class(DICE_A))})
    arms = [f"sgd={tmp_path}/round*/sgd/*", f"hco={tmp_path}/round*/hco/*"]
    result = compare_runs(arms)
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("round1/all-s1", "round2/all-s2", "round3/all-s3")
    assert np.allclose(dice.differences, [-0.01, -0.02, -0.03], atol=1e-12)
    (record,) = [r for r in result.records if r.metric == "dice"]
    assert record.result.mean_a == pytest.approx(float(np.mean(DICE_A)) + 0.0325)  # 4 runs
    (note,) = comparison_notes(result)
    assert note.startswith("sgd: round7/all-s1 without a partner in hco;")
    # Not vacuous: the glob narrowed to the paired rounds says nothing.
    arms[0] = f"sgd={tmp_path}/round[123]/sgd/*"
    assert comparison_notes(compare_runs(arms)) == []


def test_brace_alternatives_pool_rounds_a_bracket_cannot(tmp_path: Path) -> None:
    """Rounds 1, 9 and 10 (no one bracket or wildcard picks them and not round 2): the runs
    pair by round and seed; round 2 stays out; malformed braces are refused in one line."""
    for round_, seed in (("1", 1), ("2", 2), ("9", 2), ("10", 3)):
        write_run(tmp_path / f"round{round_}" / "sgd", f"all-s{seed}", seed=seed,
                  evals={"best": (cases(N), one_class(DICE_A))})
        write_run(tmp_path / f"round{round_}" / "hco", f"all-s{seed}", seed=seed,
                  optimizer="sgd-hco",
                  evals={"best": (cases(N), one_class(DICE_A + 0.001 * int(round_)))})
    arms = [f"sgd={tmp_path}/round{{1,9,10}}/sgd/*", f"hco={tmp_path}/round{{1,9,10}}/hco/*"]
    result = compare_runs(arms)
    assert result.arms[0].n_runs == 3
    (dice,) = [d for d in result.seed_differences if d.metric == "dice"]
    assert dice.keys == ("round1/all-s1", "round10/all-s3", "round9/all-s2")
    assert np.allclose(dice.differences, [0.001, 0.010, 0.009], atol=1e-12)
    assert comparison_notes(result) == []
    assert expand_braces("a{1,2}/b{x,}") == ["a1/bx", "a1/b", "a2/bx", "a2/b"]
    for bad, what in (("r{1,2/x}", "plain text"), ("r{1,{2}}", "nested"), ("r{1,*}", "plain"),
                      ("r{1", "unbalanced")):
        with pytest.raises(ConfigError, match=what):
            resolve_arm(f"x={tmp_path}/{bad}")
    assert _glob_regex("round{1,10}").fullmatch("round10").groups() == ("10",)


def test_glob_captures_follow_the_wildcards() -> None:
    assert _glob_regex("round[23]-h200").fullmatch("round2-h200").groups() == ("2",)
    assert _glob_regex("a?-[!x]*").fullmatch("ab-yzz").groups() == ("b", "y", "zz")
    assert _glob_regex("a?-[!x]*").fullmatch("ab-xzz") is None
    assert _glob_regex("sgd.[*").fullmatch("sgd.[tail").groups() == ("tail",)  # no ']': literal


def test_margins_shift_the_per_case_and_per_seed_tests(tmp_path: Path) -> None:
    """Dice and HD95 margins (stored units: Dice as a fraction) reach the per-case tests of
    the averaged runs and the t-test over the seeds; the metrics without one are tested as
    before, and every record carries its margin."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.01})
    _seeded(tmp_path, "hco", {"all-s1": -0.002, "all-s2": 0.004, "all-s3": -0.016},
            optimizer="sgd-hco")
    arms = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    plain = compare_runs(arms)
    result = compare_runs(arms, margins={"dice": 0.005, "hd95": 0.1})
    by_metric = {r.metric: r for r in result.records}
    a = np.mean([DICE_A + s for s in (0.0, 0.01, -0.01)], axis=0)
    b = np.mean([DICE_A + s for s in (-0.002, 0.004, -0.016)], axis=0)
    assert by_metric["dice"].result.p_ttest == pytest.approx(
        sps.ttest_rel(b + 0.005, a, alternative="greater").pvalue)
    assert by_metric["hd95"].result.p_ttest == pytest.approx(
        sps.ttest_rel(20 * (1 - b) - 0.1, 20 * (1 - a), alternative="less").pvalue)
    assert by_metric["dice"].as_dict()["margin"] == 0.005
    plain_jaccard = next(r for r in plain.records if r.metric == "jaccard")
    assert by_metric["jaccard"].result == plain_jaccard.result
    assert by_metric["jaccard"].as_dict()["margin"] == 0.0
    (seeds,) = [d for d in result.seed_differences if d.metric == "dice"]
    expected = np.array([-0.002, -0.006, -0.006])
    assert seeds.p_ttest == pytest.approx(
        sps.ttest_1samp(expected + 0.005, 0.0, alternative="greater").pvalue)
    assert seeds.as_dict()["margin"] == 0.005 and result.margins == {"dice": 0.005, "hd95": 0.1}
    with pytest.raises(ConfigError, match="unknown metric 'hd'"):
        compare_runs(arms, margins={"hd": 1.0})
    with pytest.raises(ConfigError, match="one-sided"):
        compare_runs(arms, margins={"dice": 0.005}, hypothesis="two-sided")


def test_one_run_arms_are_told_that_seeds_are_unseen(tmp_path: Path) -> None:
    _seeded(tmp_path, "sgd", {"all-s1": 0.0})
    _seeded(tmp_path, "hco", {"all-s1": 0.01, "all-s2": 0.02}, optimizer="sgd-hco")
    (note,) = comparison_notes(compare_runs([f"{tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]))
    assert note.startswith(f"one run in {tmp_path}/sgd/*: the per-case tests take the cases")
    # Not vacuous: with a second seed in the reference the per-seed test runs, and no note.
    _seeded(tmp_path, "sgd", {"all-s2": 0.0})
    assert comparison_notes(compare_runs([f"{tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"])) == []


def test_no_per_seed_differences_without_two_paired_runs(tmp_path: Path) -> None:
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01})
    _seeded(tmp_path, "hco", {"all-s1": 0.01}, optimizer="sgd-hco")
    _seeded(tmp_path, "other", {"all-s7": 0.01, "all-s8": 0.0})
    result = compare_runs([f"{tmp_path}/sgd/*", f"{tmp_path}/hco/*", f"{tmp_path}/other/*"])
    assert result.seed_differences == []


def test_arms_predicted_differently_are_noted(tmp_path: Path) -> None:
    """Summaries of hco predict record how the predictions were made: arms (or an arm's runs)
    that differ in it get a note naming the setting; a summary without settings (hco evaluate
    of files made elsewhere) takes part in no such note."""

    def noted(result: object) -> list[str]:
        return [n for n in comparison_notes(result) if n.startswith("the predictions")]  # type: ignore[arg-type]

    def summary(name: str, **settings: object) -> Path:
        path = write_summary(tmp_path / name / "summary.json", cases(N), one_class(DICE_A))
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**data, **settings}), encoding="utf-8")
        return path

    plain = summary("plain", lcc=True, tta_axes=[], stride=[18, 18, 4])
    tta = summary("tta", lcc=True, tta_axes=[0, 1, 2], stride=[18, 18, 4])
    bare = summary("bare")
    (note,) = noted(compare_runs([str(plain), str(tta), str(bare)]))
    assert note.startswith("the predictions were not made alike, tta_axes: ")
    assert "tta_axes: plain [], tta [0, 1, 2] (as each" in note and "bare" not in note
    assert noted(compare_runs([str(plain), str(bare)])) == []
    (note,) = noted(compare_runs([f"a={tmp_path}/{{plain,tta}}/summary.json", str(plain)]))
    assert "tta_axes: a [] and [0, 1, 2], plain [] (as" in note


def test_seeds_without_a_difference_are_not_counted_in_better() -> None:
    """A seed whose pair has no finite case (every HD95 NaN) has no difference: "Better" reads
    1/2, not 1/3."""
    seed = SeedDifference(arm="b", reference="a", class_="1", metric="hd95",
                          keys=("s1", "s2", "s3"), differences=(-1.0, math.nan, 0.5),
                          mean=-0.25, std=1.06, n_better=1, p_ttest=0.4)
    assert seed.n_finite == 2


def test_a_claim_gets_the_rules_verdict_over_the_seeds(tmp_path: Path) -> None:
    """A claimed Dice gain of 1.11 points (stored as 0.0111) and an HD95 reduction of 0.1:
    the per-seed differences of the claimed metrics carry stats.claim_verdict on them (HD95 of
    these runs is 20 (1 - Dice), so its improvement is 20 times the Dice gain); the others
    carry none; records say so; an unknown metric or a claim that is no gain is an error."""
    _seeded(tmp_path, "sgd", {"all-s1": 0.0, "all-s2": 0.01, "all-s3": -0.01})
    _seeded(tmp_path, "hco", {"all-s1": 0.004, "all-s2": 0.016, "all-s3": -0.004},
            optimizer="sgd-hco")
    arms = [f"sgd={tmp_path}/sgd/*", f"hco={tmp_path}/hco/*"]
    result = compare_runs(arms, claims={"hd95": 0.1, "dice": 0.0111})
    assert result.claims == {"dice": 0.0111, "hd95": 0.1}  # in the metrics' order
    by_metric = {d.metric: d for d in result.seed_differences}
    dice, hd95 = by_metric["dice"], by_metric["hd95"]
    gains = np.array([0.004, 0.006, 0.006])
    expected = stats.claim_verdict(gains, 0.0111)
    assert dice.verdict is not None and expected is not None
    assert (dice.verdict.mean, dice.verdict.p, dice.verdict.upper) == pytest.approx(
        (expected.mean, expected.p, expected.upper))
    assert dice.verdict.gain and dice.verdict.excluded
    assert hd95.verdict is not None
    assert hd95.verdict.mean == pytest.approx(20 * gains.mean())
    assert hd95.verdict.gain and not hd95.verdict.excluded  # 0.107 +- spread: 0.1 not excluded
    assert by_metric["jaccard"].verdict is None and by_metric["jaccard"].claim is None
    record = dice.as_dict()
    assert record["claim"] == 0.0111 and record["claim_verdict"] == "a gain, smaller than the claim"
    assert record["claim_upper_95"] == pytest.approx(dice.verdict.upper)
    assert "claim" not in by_metric["asd"].as_dict()
    with pytest.raises(ConfigError, match="a claim for unknown metric 'hd'"):
        compare_runs(arms, claims={"hd": 1.0})
    with pytest.raises(ConfigError, match="claimed gain must be a positive number"):
        compare_runs(arms, claims={"dice": -0.01})
