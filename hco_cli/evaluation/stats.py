"""Paired significance tests between two arms, evaluated on the same cases.

The alternative hypothesis is one of three (``hypothesis``, default ``"better"``): arm B is
better than arm A (one-sided), B is worse than A (one-sided, the opposite direction), or B
differs from A (two-sided). What "better" means depends on the metric: Dice and Jaccard are
better when higher, HD95 and ASD when lower. The p-values are exactly those of
:func:`scipy.stats.wilcoxon` and :func:`scipy.stats.ttest_rel` called on ``(b, a)`` with
``alternative="greater"`` for "better" where higher is better and for "worse" where lower is
better, ``"less"`` for the other two combinations, and ``"two-sided"`` for "two-sided" on
every metric; nothing is re-derived here.

A ``margin`` (in the metric's own units, default 0) turns a one-sided test into one against a
shifted reference: with "better", H1 is that B is better than A *minus* the margin (a
non-inferiority test: B is not worse than A by the margin or more); with "worse", that B is
worse than A by more than the margin. The tests are scipy's on B moved by the margin towards
better (``b + margin`` where higher is better, ``b - margin`` where lower is), which is the
paired test of the shifted null hypothesis for both the t-test and the signed-rank test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

from hco_cli.errors import ConfigError

TestName = Literal["wilcoxon", "ttest"]
ZeroMethod = Literal["wilcox", "pratt", "zsplit"]
Hypothesis = Literal["better", "worse", "two-sided"]
TESTS: tuple[TestName, ...] = ("wilcoxon", "ttest")
ZERO_METHODS: tuple[ZeroMethod, ...] = ("wilcox", "pratt", "zsplit")
HYPOTHESES: tuple[Hypothesis, ...] = ("better", "worse", "two-sided")

# Direction of improvement per metric (True: higher is better).
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "jaccard": True, "hd95": False, "asd": False}


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison of arm B against arm A on one metric.

    ``mean_*``/``std_*`` are over the ``n`` cases where both arms are finite, so that
    ``mean_diff == mean_b - mean_a`` is also the mean of the paired differences. ``std`` is
    the sample standard deviation (ddof=1). A p-value is NaN when its test was not requested
    or when scipy returns NaN (for example fewer than two cases for the t-test).
    """

    n: int
    n_excluded: int
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    mean_diff: float
    rel_change: float
    p_wilcoxon: float
    p_ttest: float


def check_hypothesis(hypothesis: str) -> None:
    """Raise a ConfigError unless ``hypothesis`` is one of :data:`HYPOTHESES`."""
    if hypothesis not in HYPOTHESES:
        raise ConfigError(f"unknown alternative {hypothesis!r}; expected one of "
                          f"{', '.join(HYPOTHESES)}")


def alternative_for(
    metric: str, hypothesis: Hypothesis = "better"
) -> Literal["greater", "less", "two-sided"]:
    """The scipy ``alternative`` for "B better than A", "B worse than A" or "B differs from
    A" (``hypothesis``), with differences taken as B - A."""
    if metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"unknown metric {metric!r}; expected one of {sorted(HIGHER_IS_BETTER)}")
    check_hypothesis(hypothesis)
    if hypothesis == "two-sided":
        return "two-sided"
    return "greater" if HIGHER_IS_BETTER[metric] == (hypothesis == "better") else "less"


def check_margin(margin: float, hypothesis: Hypothesis) -> None:
    """Raise a ConfigError unless ``margin`` is finite and non-negative, and one-sided where
    it is not 0."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"a margin must be a finite number >= 0, got {margin}")
    if margin and hypothesis == "two-sided":
        raise ConfigError("a margin needs a one-sided alternative (better: non-inferiority, "
                          "worse: worse by more than the margin), not two-sided")


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else math.nan


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    metric: str,
    tests: Sequence[TestName] = TESTS,
    zero_method: ZeroMethod = "wilcox",
    hypothesis: Hypothesis = "better",
    margin: float = 0.0,
) -> PairedResult:
    """Test whether ``b`` is better than ``a`` on ``metric`` (``hypothesis="worse"``: worse;
    ``"two-sided"``: different), pairing values by position; ``margin``: see the module's
    docstring (the means and their difference stay those of ``a`` and ``b``).

    A pair is excluded when either value is NaN (or infinite); ``n_excluded`` counts them.
    ``zero_method`` is passed to scipy's Wilcoxon test unchanged: the default ``"wilcox"``
    (scipy's default) drops zero differences before ranking, ``"pratt"`` ranks them and then
    drops them, ``"zsplit"`` splits their ranks between the two signs.
    """
    alternative = alternative_for(metric, hypothesis)
    check_margin(margin, hypothesis)
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise ConfigError(f"unknown test {unknown[0]!r}; expected one of {list(TESTS)}")
    if zero_method not in ZERO_METHODS:
        raise ConfigError(f"unknown zero method {zero_method!r}; expected one of {ZERO_METHODS}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    mean_a, mean_b = _mean(x), _mean(y)
    diff = mean_b - mean_a
    p_w = p_t = math.nan
    shifted = y + (margin if HIGHER_IS_BETTER[metric] else -margin)
    if x.size:
        # scipy warns on degenerate inputs (all differences zero, n=1); the NaN or 1.0 it
        # returns already says so, and a library must not write to stderr. Where its
        # permutation path (small samples with ties or zeros) is left with one observation it
        # raises instead: that is a test that cannot run, NaN like the others.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "wilcoxon" in tests:
                try:
                    res = stats.wilcoxon(shifted, x, zero_method=zero_method,
                                         alternative=alternative)
                    p_w = float(res.pvalue)
                except ValueError:
                    p_w = math.nan
            if "ttest" in tests:
                p_t = float(stats.ttest_rel(shifted, x, alternative=alternative).pvalue)
    return PairedResult(
        n=int(x.size),
        n_excluded=int((~keep).sum()),
        mean_a=mean_a,
        mean_b=mean_b,
        std_a=_std(x),
        std_b=_std(y),
        mean_diff=diff,
        rel_change=diff / mean_a if x.size and mean_a != 0 else math.nan,
        p_wilcoxon=p_w,
        p_ttest=p_t,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    With the m finite p-values sorted ascending, the k-th (0-based) is multiplied by m - k,
    a running maximum keeps the adjusted values monotone, and each is capped at 1. NaN
    p-values (tests that could not run) stay NaN and do not count towards m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for k, idx in enumerate(order):
        running = max(running, min(1.0, (m - k) * float(p[idx])))
        out[idx] = running
    return [float(v) for v in out]


def detectable_mean(std: float, n: int, *, metric: str, hypothesis: Hypothesis = "better",
                    margin: float = 0.0) -> float:
    """The true mean difference (B - A, the metric's units) at which the t-test of
    ``hypothesis`` with ``margin`` (module docstring) over ``n`` differences of standard
    deviation ``std`` rejects with 80 % power at 0.05: :func:`detectable_difference` measured
    from the test's null value (``-margin`` where higher is better, ``+margin`` where lower
    is) in the alternative's direction, so signed (a Dice gain positive, an HD95 gain
    negative); unsigned (either direction) for "two-sided"."""
    check_margin(margin, hypothesis)
    size = detectable_difference(std, n, two_sided=hypothesis == "two-sided")
    if hypothesis == "two-sided":
        return size
    better = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    toward = better if hypothesis == "better" else -better
    return -better * margin + toward * size


def detectable_difference(std: float, n: int, *, two_sided: bool = False, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """The smallest true mean difference that a t-test over ``n`` paired differences with
    standard deviation ``std`` detects with probability ``power`` at level ``alpha`` (its
    sensitivity: how large an effect a non-significant result could still have missed).

    The t statistic of n differences with mean d and standard deviation s follows the
    noncentral t distribution with n - 1 degrees of freedom and noncentrality d sqrt(n) / s;
    the noncentrality at which it exceeds the critical value with probability ``power`` (either
    tail for ``two_sided``) is solved for and scaled back. NaN for n < 2 or a standard
    deviation that is not finite and positive.
    """
    if n < 2 or not (math.isfinite(std) and std > 0):
        return math.nan
    df = n - 1
    critical = float(stats.t.ppf(1 - (alpha / 2 if two_sided else alpha), df))

    def shortfall(nc: float) -> float:
        reached = float(stats.nct.sf(critical, df, nc))
        if two_sided:  # the far tail; scipy returns NaN where it is below ~1e-20
            far = float(stats.nct.cdf(-critical, df, nc))
            reached += far if math.isfinite(far) else 0.0
        return reached - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    nc = optimize.brentq(shortfall, 0.0, high, xtol=1e-12)
    return float(nc * std / math.sqrt(n))


def mean_sem(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error of the mean (ddof=1) and count of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    sem = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return _mean(v), sem, int(v.size)


def mean_bounds(values: Sequence[float] | np.ndarray, *,
                confidence: float = 0.95) -> tuple[float, float]:
    """One-sided ``confidence`` bounds of the mean of the finite values by Student's t (the
    ends of the two-sided ``2 confidence - 1`` interval): the true mean lies above the first
    and, separately, below the second with that confidence. NaN for fewer than two values; a
    sample without spread bounds its mean at the mean."""
    mean, sem, n = mean_sem(values)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(confidence, n - 1)) * sem
    return mean - half, mean + half


def nan_summary(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1) and count of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return _mean(v), _std(v), int(v.size)


def batch_means_sem(runs: Sequence[Sequence[float] | np.ndarray]) -> tuple[float, float, int]:
    """Mean, batch-means standard error of the mean and count of the finite values of one or
    more time series (``runs``: one sequence per run, each in time order).

    Neighbouring values of a series (training steps) can be correlated, and then sd/sqrt(n)
    (:func:`mean_sem`) is too small. Batch means, the standard estimator of MCMC output
    analysis (Flegal & Jones 2010, Ann. Statist. 38: 1034-1070), cuts each series into
    contiguous batches long enough for their means to be nearly independent and takes the
    standard error from the spread of those means: with ``a`` batches of ``b`` values,
    SE = sd(batch means, ddof=1) / sqrt(a). Here the batch length is one for all runs,
    ``b = floor(sqrt(n / k))`` for ``n`` values in ``k`` runs (sqrt(n) batches of sqrt(n)
    values for a single series, the usual choice), and each run is cut on its own into
    ``max(1, n_r // b)`` contiguous batches of near-equal length (``numpy.array_split``), so
    that no batch straddles two runs and every value is in exactly one batch (runs of equal
    length get batches of ``b`` or ``b + 1`` values; a run shorter than ``2 b`` is one batch).
    As the lengths ``b_j`` can differ, each batch mean is weighted by its length, sigma^2 =
    sum_j b_j (mean_j - mean)^2 / (a - 1) and SE = sqrt(sigma^2 / n), which is the formula
    above for equal lengths; ``mean`` is that of all ``n`` values.

    The batch means of all runs are pooled, so a difference in level between runs (seeds)
    counts as uncertainty, but only as much as a batch-to-batch difference does: runs that
    stay apart for the whole series are a seed effect this SE understates (it is then an SE
    for these runs, not for a new seed). With few values per run the batches are short and
    the SE tends to sd/sqrt(n), which does not allow for autocorrelation; with fewer than two
    batches (fewer than two values) the SE is NaN. Non-finite values are dropped, the rest
    keep their order.
    """
    series = [v[np.isfinite(v)] for v in (np.asarray(r, dtype=np.float64).ravel() for r in runs)]
    series = [v for v in series if v.size]
    n = sum(v.size for v in series)
    if not n:
        return math.nan, math.nan, 0
    size = max(1, math.isqrt(n // len(series)))
    batches = [b for v in series for b in np.array_split(v, max(1, v.size // size))]
    mean = float(np.mean(np.concatenate(series)))
    if len(batches) < 2:
        return mean, math.nan, n
    spread = sum(b.size * (float(b.mean()) - mean) ** 2 for b in batches)
    return mean, math.sqrt(spread / (len(batches) - 1) / n), n


@dataclass(frozen=True)
class ClaimVerdict:
    """A claimed gain (a paper's, in the metric's direction of improvement) held against
    per-seed differences by a fixed rule (:func:`claim_verdict`); ``mean``, ``upper`` and
    ``claim`` are improvements (arm better: positive; HD95/ASD reductions)."""

    n: int
    mean: float
    p: float  # one-sided t-test over the seeds, H1: the arm better
    upper: float  # one-sided upper confidence bound of the mean improvement
    claim: float
    alpha: float = 0.05

    @property
    def gain(self) -> bool:
        return self.p < self.alpha

    @property
    def excluded(self) -> bool:
        return self.upper < self.claim

    def outcome(self, claim: str) -> str:
        """The verdict in a phrase; ``claim`` names the claim as shown (e.g. "the paper's
        +1.11", in the table's units)."""
        if self.gain:
            return f"a gain, smaller than {claim}" if self.excluded else "a gain"
        return f"{claim} excluded" if self.excluded else "undecided"


def claim_verdict(differences: Sequence[float] | np.ndarray, claim: float, *,
                  higher_is_better: bool = True, alpha: float = 0.05) -> ClaimVerdict | None:
    """Per-seed differences (arm minus reference, one per seed) against a claimed gain: "a
    gain" where the one-sided t-test over the seeds finds the arm better at ``alpha``; the
    claim "excluded" where the one-sided ``1 - alpha`` upper bound of the mean improvement lies
    below it; both can hold (a gain, smaller than claimed); otherwise undecided. None with
    fewer than two finite differences. Differences without spread: their sign decides the
    test, and the bound is their mean."""
    check_claim(claim)
    v = np.asarray(differences, dtype=np.float64)
    improvement = v if higher_is_better else -v
    mean, sem, n = mean_sem(improvement)
    if n < 2:
        return None
    _, upper = mean_bounds(improvement, confidence=1 - alpha)
    p = float(stats.t.sf(mean / sem, n - 1)) if sem > 0 else float(mean <= 0)
    return ClaimVerdict(n, mean, p, upper, claim, alpha)


def check_claim(claim: float) -> None:
    """A claimed gain is a positive improvement (a finite number above zero)."""
    if not math.isfinite(claim) or claim <= 0:
        raise ConfigError(f"a claimed gain must be a positive number (the improvement in the "
                          f"metric's better direction), got {claim}")
