"""Paired tests: p-values identical to scipy's, direction per metric and hypothesis, NaN
exclusion, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from hco_cli.errors import ConfigError
from hco_cli.evaluation import stats

# Per-case tables with ties among |differences| and zero differences.
A = np.array([0.80, 0.82, 0.85, 0.90, 0.70, 0.75, 0.88, 0.91, 0.60, 0.77, 0.83, 0.79])
B = np.array([0.82, 0.81, 0.85, 0.93, 0.72, 0.73, 0.90, 0.91, 0.65, 0.76, 0.85, 0.79])


@pytest.mark.parametrize(
    ("metric", "zero_method"),
    [("dice", "wilcox"), ("jaccard", "wilcox"), ("hd95", "wilcox"), ("asd", "wilcox"),
     ("dice", "pratt"), ("hd95", "zsplit")],
)  # fmt: skip
def test_p_values_equal_scipy(metric: str, zero_method: stats.ZeroMethod) -> None:
    alternative = "greater" if metric in ("dice", "jaccard") else "less"
    res = stats.paired_test(A, B, metric=metric, zero_method=zero_method)
    expected_w = sps.wilcoxon(B, A, zero_method=zero_method, alternative=alternative).pvalue
    expected_t = sps.ttest_rel(B, A, alternative=alternative).pvalue
    assert res.p_wilcoxon == expected_w
    assert res.p_ttest == expected_t
    assert res.n == 12 and res.n_excluded == 0


@pytest.mark.parametrize(
    ("metric", "hypothesis", "alternative"),
    [("dice", "better", "greater"), ("dice", "worse", "less"), ("dice", "two-sided", "two-sided"),
     ("jaccard", "worse", "less"), ("hd95", "better", "less"), ("hd95", "worse", "greater"),
     ("hd95", "two-sided", "two-sided"), ("asd", "worse", "greater")],
)  # fmt: skip
def test_hypothesis_maps_to_scipy_alternative(
    metric: str, hypothesis: stats.Hypothesis, alternative: str
) -> None:
    """Differences without ties or zeros (scipy's exact path; with ties its "auto" method
    enumerates sign flips, about 1.5 s a call): the mapping is what is tested here, the tie
    and zero handling in test_p_values_equal_scipy."""
    a = np.array([0.80, 0.82, 0.85, 0.90, 0.70, 0.75, 0.88, 0.91, 0.60, 0.77, 0.83, 0.79])
    b = a + np.array([0.021, -0.013, 0.034, 0.026, 0.018, -0.027, 0.012, 0.041, 0.049, -0.008,
                      0.015, 0.031])
    res = stats.paired_test(a, b, metric=metric, hypothesis=hypothesis)
    assert stats.alternative_for(metric, hypothesis) == alternative
    assert res.p_wilcoxon == sps.wilcoxon(b, a, alternative=alternative).pvalue
    assert res.p_ttest == sps.ttest_rel(b, a, alternative=alternative).pvalue
    assert 0 < res.p_wilcoxon < 1 and 0 < res.p_ttest < 1


def test_the_three_hypotheses_give_different_p_values() -> None:
    """On A, B (B mostly higher) the one-sided p-values differ from each other and from the
    two-sided one, so a hypothesis that is not passed through cannot go unnoticed."""
    p = {h: stats.paired_test(A, B, metric="dice", hypothesis=h) for h in stats.HYPOTHESES}
    assert len({r.p_wilcoxon for r in p.values()}) == 3
    assert len({r.p_ttest for r in p.values()}) == 3
    assert p["better"].p_ttest < 0.5 < p["worse"].p_ttest


def test_one_sided_t_test_p_values_sum_to_one() -> None:
    """Continuous differences without ties: P(T >= t) + P(T <= t) = 1 for the t-test, and the
    two-sided p-value is twice the smaller one."""
    rng = np.random.default_rng(3)
    a = rng.normal(0.8, 0.05, 15)
    b = a + rng.normal(0.01, 0.02, 15)
    for metric in ("dice", "hd95"):
        better, worse, both = (stats.paired_test(a, b, metric=metric, tests=("ttest",),
                                                 hypothesis=h).p_ttest
                               for h in ("better", "worse", "two-sided"))
        assert better + worse == pytest.approx(1.0, abs=1e-12)
        assert both == pytest.approx(2 * min(better, worse), abs=1e-12)
        assert better != pytest.approx(worse)


def test_zero_methods_differ_on_zero_differences() -> None:
    # Three zero differences: dropping them (wilcox) or ranking them first (pratt) gives
    # different p-values here, so passing zero_method through is observable.
    wilcox = stats.paired_test(A, B, metric="dice", zero_method="wilcox").p_wilcoxon
    pratt = stats.paired_test(A, B, metric="dice", zero_method="pratt").p_wilcoxon
    assert wilcox == pytest.approx(0.056640625)
    assert pratt == pytest.approx(0.080078125)


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
def test_one_case_with_a_zero_difference_gives_nan_not_an_error(
    zero_method: stats.ZeroMethod
) -> None:
    """scipy's permutation path raises on a single observation (one case left, its difference
    zero: an HD95 where every other case of an arm is NaN); the test cannot run, so NaN."""
    with pytest.raises(ValueError):  # not vacuous: scipy itself refuses
        sps.wilcoxon([5.0], [5.0], zero_method=zero_method, alternative="less")
    res = stats.paired_test([5.0, math.nan], [5.0, 7.0], metric="hd95", zero_method=zero_method)
    assert res.n == 1 and res.n_excluded == 1
    assert math.isnan(res.p_wilcoxon) and math.isnan(res.p_ttest)
    assert res.mean_diff == 0.0


def test_direction_lower_is_better() -> None:
    a = np.array([10.0, 12.0, 9.0, 15.0, 11.0, 13.0, 8.0, 14.0])
    b = a - np.array([2.0, 3.0, 1.0, 4.0, 2.5, 3.5, 1.5, 2.0])  # B clearly lower
    better = stats.paired_test(a, b, metric="hd95")
    assert better.p_wilcoxon < 0.01 and better.p_ttest < 0.01
    assert better.p_wilcoxon == pytest.approx(1 / 2**8)  # exact: all 8 signs favour B
    worse = stats.paired_test(b, a, metric="asd")
    assert worse.p_wilcoxon > 0.99 and worse.p_ttest > 0.99
    # For Dice the same B (lower) is worse.
    assert stats.paired_test(a, b, metric="dice").p_wilcoxon > 0.99


def test_effect_sizes_and_summary() -> None:
    a = np.array([0.5, 0.6, 0.7, 0.8])
    b = np.array([0.6, 0.6, 0.9, 0.9])
    r = stats.paired_test(a, b, metric="dice")
    assert r.mean_a == pytest.approx(0.65) and r.mean_b == pytest.approx(0.75)
    assert r.mean_diff == pytest.approx(0.10)
    assert r.rel_change == pytest.approx(0.10 / 0.65)
    assert r.std_a == pytest.approx(np.std(a, ddof=1))
    assert r.std_b == pytest.approx(np.std(b, ddof=1))


def test_nan_pairs_are_excluded_and_counted() -> None:
    a = np.array([1.0, 2.0, math.nan, 4.0, 5.0, 6.0, 7.0])
    b = np.array([0.5, math.nan, 2.0, 3.0, 4.5, 4.0, 6.0])
    r = stats.paired_test(a, b, metric="asd")
    keep = [0, 3, 4, 5, 6]
    assert r.n == 5 and r.n_excluded == 2
    assert r.p_wilcoxon == sps.wilcoxon(b[keep], a[keep], alternative="less").pvalue
    assert r.p_ttest == sps.ttest_rel(b[keep], a[keep], alternative="less").pvalue
    assert r.mean_a == pytest.approx(np.mean(a[keep]))


def test_degenerate_inputs_give_nan_not_errors() -> None:
    nan = np.array([math.nan, math.nan])
    r = stats.paired_test(nan, nan, metric="dice")
    assert r.n == 0 and r.n_excluded == 2
    assert math.isnan(r.p_wilcoxon) and math.isnan(r.p_ttest) and math.isnan(r.rel_change)
    one = stats.paired_test([0.5], [0.6], metric="dice")
    assert one.n == 1 and math.isnan(one.p_ttest) and math.isnan(one.std_a)


def test_only_requested_tests_run() -> None:
    r = stats.paired_test(A, B, metric="dice", tests=("ttest",))
    assert math.isnan(r.p_wilcoxon) and not math.isnan(r.p_ttest)


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown metric"):
        stats.paired_test(A, B, metric="volume")
    with pytest.raises(ConfigError, match="unknown zero method"):
        stats.paired_test(A, B, metric="dice", zero_method="none")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown test"):
        stats.paired_test(A, B, metric="dice", tests=("mannwhitney",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown alternative 'less'"):
        stats.paired_test(A, B, metric="dice", hypothesis="less")  # type: ignore[arg-type]


def test_holm_matches_hand_computation() -> None:
    # Sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06
    # by the running maximum).
    assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # Capped at 1; a NaN p-value is not counted in m.
    out = stats.holm([0.5, math.nan, 0.2])
    assert out[0] == pytest.approx(min(1.0, max(0.4, 0.5)))
    assert math.isnan(out[1])
    assert out[2] == pytest.approx(0.4)
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_mean_sem() -> None:
    mean, sem, n = stats.mean_sem([1.0, 2.0, 3.0, math.nan, 6.0])
    assert n == 4 and mean == pytest.approx(3.0)
    assert sem == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2.0)


def test_mean_bounds_are_the_ends_of_the_two_sided_interval() -> None:
    values = [-0.90, -0.21, -0.95, math.nan]
    low, high = stats.mean_bounds(values)
    finite = np.array(values[:3])
    expected = sps.t.interval(0.90, 2, loc=finite.mean(), scale=sps.sem(finite))
    assert (low, high) == pytest.approx(expected)
    # the one-sided t-test at the upper bound sits exactly at 0.05
    at_bound = sps.ttest_1samp(finite, high, alternative="less").pvalue
    assert at_bound == pytest.approx(0.05)
    assert stats.mean_bounds([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert all(math.isnan(b) for b in stats.mean_bounds([1.0]))


@pytest.mark.parametrize(
    ("metric", "hypothesis", "margin", "shift", "alternative"),
    [("dice", "better", 0.03, 0.03, "greater"), ("dice", "worse", 0.03, 0.03, "less"),
     ("hd95", "better", 1.5, -1.5, "less"), ("asd", "worse", 0.25, -0.25, "greater")],
)  # fmt: skip
def test_a_margin_tests_against_the_shifted_reference(
    metric: str, hypothesis: stats.Hypothesis, margin: float, shift: float, alternative: str
) -> None:
    """Non-inferiority (better) and inferiority by more than the margin (worse): scipy's tests
    on B moved by the margin towards better; the reported means and difference stay B's."""
    a = np.array([0.80, 0.82, 0.85, 0.90, 0.70, 0.75, 0.88, 0.91, 0.60, 0.77, 0.83, 0.79])
    b = a + np.array([-0.021, -0.013, 0.034, -0.026, 0.018, -0.027, 0.012, -0.041, 0.049,
                      -0.008, -0.015, 0.031])
    res = stats.paired_test(a, b, metric=metric, hypothesis=hypothesis, margin=margin)
    assert res.p_wilcoxon == sps.wilcoxon(b + shift, a, alternative=alternative).pvalue
    assert res.p_ttest == sps.ttest_rel(b + shift, a, alternative=alternative).pvalue
    assert res.mean_diff == pytest.approx(float(np.mean(b - a)))
    plain = stats.paired_test(a, b, metric=metric, hypothesis=hypothesis)
    # Not vacuous: the margin moves the p-value, towards significance for non-inferiority.
    moved = res.p_ttest < plain.p_ttest if hypothesis == "better" else res.p_ttest > plain.p_ttest
    assert moved, (res.p_ttest, plain.p_ttest)


@pytest.mark.parametrize(("margin", "hypothesis"),
                         [(-0.01, "better"), (math.nan, "better"), (math.inf, "worse"),
                          (0.01, "two-sided")])
def test_invalid_margins(margin: float, hypothesis: stats.Hypothesis) -> None:
    with pytest.raises(ConfigError, match="margin"):
        stats.paired_test(A, B, metric="dice", hypothesis=hypothesis, margin=margin)
    stats.paired_test([0.8, 0.7, 0.9], [0.85, 0.71, 0.88], metric="dice",
                      hypothesis="two-sided", margin=0.0)  # no margin: fine


@pytest.mark.parametrize("two_sided", [False, True])
def test_detectable_difference_for_many_seeds_is_the_normal_formula(two_sided: bool) -> None:
    # n = 400: the t test is the z test, whose detectable difference is
    # (z_{1-alpha(/2)} + z_{power}) sd / sqrt(n)
    z = sps.norm.ppf(0.975 if two_sided else 0.95) + sps.norm.ppf(0.8)
    got = stats.detectable_difference(0.8, 400, two_sided=two_sided)
    assert got == pytest.approx(z * 0.8 / 20, rel=3e-3)


@pytest.mark.parametrize(("n", "two_sided"), [(3, False), (3, True), (5, False)])
def test_detectable_difference_is_found_80_percent_of_the_time(n: int, two_sided: bool) -> None:
    # simulated t tests of n normal differences whose true mean is the detectable difference
    sd = 0.7
    d = stats.detectable_difference(sd, n, two_sided=two_sided)
    draws = np.random.default_rng(0).normal(d, sd, size=(200_000, n))
    t = draws.mean(1) / (draws.std(1, ddof=1) / math.sqrt(n))
    critical = sps.t.ppf(0.975 if two_sided else 0.95, n - 1)
    found = (np.abs(t) > critical) if two_sided else (t > critical)
    assert found.mean() == pytest.approx(0.8, abs=0.005)


@pytest.mark.parametrize(("metric", "hypothesis", "margin", "expected_sign"), [
    ("dice", "better", 0.0, 1), ("dice", "better", 0.005, 1), ("dice", "worse", 0.005, -1),
    ("hd95", "better", 1.0, -1), ("hd95", "worse", 0.0, 1)])
def test_detectable_mean_is_rejected_80_percent_of_the_time_by_paired_test(
    metric: str, hypothesis: stats.Hypothesis, margin: float, expected_sign: int
) -> None:
    """Differences drawn around detectable_mean: paired_test's own t-test (with the margin and
    the alternative) rejects 80 % of the time; the value is signed in the alternative's
    direction from the null value (-margin for Dice, +margin for HD95)."""
    sd, n = 0.004 if metric == "dice" else 0.8, 4
    d = stats.detectable_mean(sd, n, metric=metric, hypothesis=hypothesis, margin=margin)
    null = -margin if metric == "dice" else margin
    assert np.sign(d - null) == expected_sign
    assert abs(d - null) == pytest.approx(stats.detectable_difference(sd, n))
    draws = np.random.default_rng(1).normal(d, sd, size=(100_000, n))
    shift = margin if metric == "dice" else -margin  # B moved towards better by the margin
    p = sps.ttest_1samp(draws + shift, 0.0, axis=1,
                        alternative=stats.alternative_for(metric, hypothesis)).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.005)
    for row, p_row in zip(draws[:20], p[:20], strict=True):  # the same test as paired_test's
        assert stats.paired_test(np.zeros(n), row, metric=metric, tests=("ttest",),
                                 hypothesis=hypothesis, margin=margin).p_ttest == \
            pytest.approx(p_row, rel=1e-9)
    two = stats.detectable_mean(sd, n, metric=metric, hypothesis="two-sided")
    assert two == pytest.approx(stats.detectable_difference(sd, n, two_sided=True))


def test_detectable_difference_needs_two_seeds_and_a_spread() -> None:
    assert math.isnan(stats.detectable_difference(1.0, 1))
    assert math.isnan(stats.detectable_difference(0.0, 5))
    assert math.isnan(stats.detectable_difference(math.nan, 5))
    # fewer seeds, more spread: a larger difference is needed
    assert stats.detectable_difference(1.0, 3) > stats.detectable_difference(1.0, 5) > 0
    assert stats.detectable_difference(2.0, 5) == pytest.approx(
        2 * stats.detectable_difference(1.0, 5))


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    """A stationary AR(1) series x_t = phi x_{t-1} + e_t, e_t ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi**2)  # drawn from the stationary distribution
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


@pytest.mark.parametrize("n_runs", [1, 4])
def test_batch_means_sem_of_ar1_is_the_analytic_standard_error(n_runs: int) -> None:
    """AR(1), phi = 0.9: the standard error of the mean of n values is
    sigma_x sqrt((1 + phi) / (1 - phi)) / sqrt(n), sqrt(19) = 4.36 times sd/sqrt(n). Batch
    means find it (within 30 %; over 200 seeds the ratio stays within 0.83-1.13); the plain
    SEM is 4.4 times too small. Four runs: the series cut into four, pooled."""
    phi, n = 0.9, 20_000
    x = _ar1(n, phi, seed=0)
    sigma_x = 1 / math.sqrt(1 - phi**2)
    analytic = sigma_x * math.sqrt((1 + phi) / (1 - phi)) / math.sqrt(n)
    mean, sem, count = stats.batch_means_sem(list(x.reshape(n_runs, -1)))
    assert count == n and mean == pytest.approx(float(x.mean()))
    assert sem == pytest.approx(analytic, rel=0.3)
    naive = stats.mean_sem(x)[1]
    assert analytic / naive == pytest.approx(math.sqrt(19), rel=0.1)
    assert sem / naive > 3.0


def test_batch_means_sem_of_independent_values_is_the_plain_sem() -> None:
    x = np.random.default_rng(1).normal(2.0, 0.5, size=20_000)
    mean, sem, n = stats.batch_means_sem([x])
    assert n == 20_000 and mean == pytest.approx(float(x.mean()))
    assert sem == pytest.approx(float(np.std(x, ddof=1)) / math.sqrt(n), rel=0.3)


def test_batch_means_never_straddle_runs() -> None:
    """Runs of 11 zeros and 13 ones: batch length floor(sqrt(24 / 2)) = 3, so the first run
    is cut into 3 batches (4, 4, 3 values) and the second into 4 (4, 3, 3, 3); every batch
    mean is 0 or 1. Batches of 3 over the joined series would put [0, 0, 1] in one."""
    mean, sem, n = stats.batch_means_sem([np.zeros(11), np.ones(13)])
    m = 13 / 24
    assert n == 24 and mean == pytest.approx(m)
    # sigma^2 = sum_j b_j (mean_j - m)^2 / (a - 1), SE = sqrt(sigma^2 / n), a = 7 batches
    assert sem == pytest.approx(math.sqrt((11 * m**2 + 13 * (1 - m) ** 2) / 6 / 24))
    joined = np.array([0, 0, 0, 1 / 3, 1, 1, 1, 1])  # what straddling batches would give
    straddled = math.sqrt(float(np.sum(3 * (joined - m) ** 2)) / 7 / 24)
    assert sem != pytest.approx(straddled, rel=0.05)


def test_batch_means_sem_counts_a_level_difference_between_runs() -> None:
    """Two runs at levels 10 and 20 (noise sd 0.01): each is cut into 20 batches of 20, and
    the 40 batch means are pooled. The level difference is part of the arm's uncertainty, so
    the SE is about 5 / sqrt(40), not each run's own ~0.0005; it is still below the SE of the
    mean of two seeds (5), which a pooled batch-means SE does not claim to be."""
    rng = np.random.default_rng(2)
    low, high = 10 + 0.01 * rng.normal(size=400), 20 + 0.01 * rng.normal(size=400)
    mean, sem, n = stats.batch_means_sem([low, high])
    batch = np.concatenate([low.reshape(20, 20).mean(1), high.reshape(20, 20).mean(1)])
    assert n == 800 and mean == pytest.approx(15.0, abs=0.01)
    assert sem == pytest.approx(float(np.std(batch, ddof=1)) / math.sqrt(40))
    within = max(stats.batch_means_sem([low])[1], stats.batch_means_sem([high])[1])
    assert within < 0.002 < 0.5 < sem < 1.0 < stats.mean_sem([low.mean(), high.mean()])[1]


def test_batch_means_sem_drops_non_finite_values_and_needs_two_values() -> None:
    mean, sem, n = stats.batch_means_sem([[1.0, math.nan, 3.0], [], [math.inf]])
    assert (mean, n) == (2.0, 2)
    assert sem == pytest.approx(1.0)  # two batches of one value: the plain SEM
    one = stats.batch_means_sem([[5.0], [math.nan]])
    assert one[0] == 5.0 and math.isnan(one[1]) and one[2] == 1
    empty = stats.batch_means_sem([])
    assert math.isnan(empty[0]) and math.isnan(empty[1]) and empty[2] == 0


@pytest.mark.parametrize(("differences", "higher", "gain", "excluded"), [
    # mean 0.6, sd 0.1, n 3: t = 10.39 on 2 df; upper 0.6 + t_0.95,2 x 0.1 / sqrt 3 = 0.77
    ([0.5, 0.7, 0.6], True, True, True),
    ([1.5, 2.5, 2.0], True, True, False),
    ([-1.0, -0.5, -1.5], True, False, True),
    ([2.0, -1.0, 1.0], True, False, False),
    # HD95-like: lower is better, so a fall of 1.5 to 2.5 is a gain of that size
    ([-1.5, -2.5, -2.0], False, True, False),
    ([1.0, 0.5, 1.5], False, False, True),
])
def test_a_claim_is_held_against_the_seeds_by_the_fixed_rule(
        differences: list[float], higher: bool, gain: bool, excluded: bool) -> None:
    """p: scipy's one-sample t-test of the improvements (H1: above 0); the upper bound:
    mean + t_{0.95, n-1} sd / sqrt(n); the claim 1.11 excluded where the bound is below it."""
    v = stats.claim_verdict(differences, 1.11, higher_is_better=higher)
    assert v is not None
    improvement = np.array(differences) * (1 if higher else -1)
    assert v.p == pytest.approx(sps.ttest_1samp(improvement, 0.0, alternative="greater").pvalue)
    upper = improvement.mean() + sps.t.ppf(0.95, 2) * improvement.std(ddof=1) / math.sqrt(3)
    assert v.upper == pytest.approx(upper)
    assert (v.gain, v.excluded, v.n) == (gain, excluded, 3)
    expected = {(True, True): "a gain, smaller than X", (True, False): "a gain",
                (False, True): "X excluded", (False, False): "undecided"}[(gain, excluded)]
    assert v.outcome("X") == expected


def test_a_claim_needs_two_seeds_and_a_positive_gain() -> None:
    assert stats.claim_verdict([0.5, math.nan], 1.0) is None
    same = stats.claim_verdict([0.5, 0.5], 1.0)  # no spread: the sign decides, bound = mean
    assert same is not None and (same.p, same.upper, same.gain, same.excluded) == (
        0.0, 0.5, True, True)
    for claim in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="claimed gain must be a positive number"):
            stats.claim_verdict([0.5, 0.7], claim)
