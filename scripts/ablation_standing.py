"""The "Which HCO" ablation's standing table and its pre-registered rule, from the rounds on disk.

    python scripts/ablation_standing.py [ROOT] [--markdown FILE] [--json FILE] [--readme FILE]

``--readme`` rewrites the short table between the README's ``<!-- ablation-standing -->``
markers (tests/scripts/test_ablation_standing.py checks that the committed README holds what
the committed rounds give).

ROOT (default ``results/ablation``) holds ``round<N>/<arm>/<run>/`` folders, one run per arm and
round, each round with its own shared pre-training and one seed. Every arm's difference is taken
against the reference of its own round: ``sgd`` where the round has one, else the A/A ``sgd-aa``
(the controls' rounds 4-6). Per arm, over the rounds where it ran:

- ΔDice (% points), best-on-validation checkpoint and last iterate: the mean over its seeds of
  each seed's difference of case means to its round's reference, and the seeds where it is
  better;
- the per-case tests over the rounds pooled (each arm's runs averaged per case, the reference's
  runs of the same rounds likewise): one-sided paired Wilcoxon and t-test, Holm over the four
  metrics, for "worse than the reference" and for "better";
- the t-test over the seeds' differences ("better");
- r: the median step norm (``step_norm`` in the run's log) over the self-training steps
  relative to the round's reference, its range over the rounds.

The rule (README, "How the ablation will name its reading", written before the rounds it binds)
applies to the HCO readings (``hco-*`` arms other than the printed update and the signs-only
control; ``sgd-co`` runs in the full-protocol study whatever it gives, as issue 15 lists it),
with three seeds: a reading is **carried** into the full-protocol study when its mean
ΔDice is above -0.5 for both checkpoints, the Holm-adjusted Wilcoxon "worse" test over the cases
is not significant (0.05) for either checkpoint, and its ΔDice is above the printed update's at
the same seed on at least two of the three seeds for both checkpoints (the printed update of
the same gradient split: ``hco-printed-region`` for ``*-region`` arms; each seed's Δ against its
own round's reference, so within a round this is the direct comparison). **"HCO helps"** needs
the best checkpoint's "better" tests significant per case (Holm, Wilcoxon and t-test) and over
the seeds (t-test), at 0.05. A reading with seeds still to run is "open", with the mean ΔDice
those seeds must exceed for the margin (the other conditions cannot be forecast), or "not
carried" when no result of theirs can put it above the printed update on two seeds.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hco_cli.errors import HcoError
from hco_cli.evaluation import stats
from hco_cli.evaluation.compare import ArmSource, Checkpoint, Comparison, compare_sources
from hco_cli.evaluation.saved_results import read_run_records
from hco_cli.io_utils import between_markers, json_safe, write_json, write_text

CHECKPOINTS: tuple[Checkpoint, ...] = ("best", "last")
MARGIN = 0.5  # Dice % points: the rule's margin (the A/A gaps reached 0.63 and 1.29)
ALPHA = 0.05
SEEDS_NEEDED = 3
CONTROLS = frozenset({"sgd-aa", "sgd-lr2x", "hco-signs"})
PRINTED = frozenset({"hco-printed", "hco-printed-region"})
_ROUND = re.compile(r"round(\d+)$")
BEGIN, END = "<!-- ablation-standing:begin -->", "<!-- ablation-standing:end -->"
WHAT = {  # what each arm of the committed rounds is, for the README's short table
    "hco-printed": "the printed update (Algorithm 2)",
    "hco-r1": "R1: the binary mask into the momentum",
    "hco-r3": "R3: the unlabeled increment only",
    "hco-r4": "R4: the refinement not persisted",
    "sgd-aa": "A/A control: sgd with other random streams",
    "hco-signs": "control: g_U through the mask's signs only",
    "sgd-lr2x": "control: sgd at 2.13x lr",
    "hco-printed-region": "the printed update, region split",
    "hco-r1-region": "R1, region split",
    "sgd-co": "cautious SGD (the CO mask)",
}


@dataclass(frozen=True)
class Round:
    number: int
    path: Path
    reference: str
    arms: tuple[str, ...]

    def run(self, arm: str) -> Path:
        runs = sorted(p for p in (self.path / arm).iterdir() if p.is_dir())
        if len(runs) != 1:
            raise HcoError(f"{self.path / arm}: expected one run folder, found {len(runs)}")
        return runs[0]

    def seed(self, arm: str) -> str:
        """The run folder's seed label (``all-s2`` -> ``s2``): the sweep's seed, also for arms
        whose run.json seed carries an offset (the A/A control)."""
        name = self.run(arm).name
        return name.rsplit("-", 1)[-1]


@dataclass
class Standing:
    """One arm's line of the standing table (Dice in % points)."""

    arm: str
    reference: str
    rounds: list[int]
    seeds: list[str]
    compiled: list[bool]
    delta: dict[str, list[float]]  # checkpoint -> per seed (rounds order)
    mean: dict[str, float]
    better: dict[str, int]
    p_worse_cases: dict[str, float]  # Holm-adjusted Wilcoxon, rounds pooled
    p_better_cases: dict[str, tuple[float, float]]  # Holm-adjusted (Wilcoxon, t-test)
    p_better_seeds: dict[str, float]
    r: list[float]
    # the gain the one-sided t-test over these seeds finds with 80 % power, per checkpoint
    detectable: dict[str, float] = field(default_factory=dict)
    above_printed: dict[str, list[bool]] = field(default_factory=dict)
    # open readings: the mean ΔDice the seeds still to run must exceed for the mean over all
    # SEEDS_NEEDED seeds to clear the margin, per checkpoint
    needs: dict[str, float] = field(default_factory=dict)
    rule: str = "-"


def find_rounds(root: Path) -> list[Round]:
    rounds = []
    for path in root.iterdir():
        match = _ROUND.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        names = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("_"))
        reference = "sgd" if "sgd" in names else "sgd-aa" if "sgd-aa" in names else None
        if reference is None:
            raise HcoError(f"{path}: no sgd or sgd-aa run to take the differences against")
        rounds.append(Round(int(match.group(1)), path, reference,
                            tuple(n for n in names if n != reference)))
    if not rounds:
        raise HcoError(f"{root}: no round<N> folders")
    return sorted(rounds, key=lambda r: r.number)


@functools.cache
def _median_step(run: Path) -> float:
    norms = [r["step_norm"] for _, r in read_run_records(run)[1]
             if r.get("phase") == "selftrain" and r.get("step_norm") is not None]
    return statistics.median(norms) if norms else math.nan


def _source(name: str, runs: list[Path]) -> ArmSource:
    return ArmSource(name=name, spec=name, members=tuple(runs))


def _dice(result: Comparison) -> stats.PairedResult:
    return next(r.result for r in result.records if r.metric == "dice")


def _holm_dice(result: Comparison) -> tuple[float, float]:
    rec = next(r for r in result.records if r.metric == "dice")
    return (rec.p_holm_wilcoxon if rec.p_holm_wilcoxon is not None else math.nan,
            rec.p_holm_ttest if rec.p_holm_ttest is not None else math.nan)


def _compiled(run: Path) -> bool:
    config = run / "config.yaml"
    return config.is_file() and "\ncompile: true" in config.read_text(encoding="utf-8")


def standing(rounds: list[Round]) -> list[Standing]:
    """Every arm's line, in the order the arms first ran."""
    order: list[tuple[str, str]] = []
    for rnd in rounds:
        for arm in rnd.arms:
            if (arm, rnd.reference) not in order:
                order.append((arm, rnd.reference))
    lines = []
    for arm, reference in order:
        where = [r for r in rounds if arm in r.arms and r.reference == reference]
        delta: dict[str, list[float]] = {}
        for checkpoint in CHECKPOINTS:
            delta[checkpoint] = [
                100 * _dice(compare_sources(
                    [_source(reference, [r.run(reference)]), _source(arm, [r.run(arm)])],
                    checkpoint=checkpoint, hypothesis="two-sided")).mean_diff
                for r in where]
        pooled = [_source(reference, [r.run(reference) for r in where]),
                  _source(arm, [r.run(arm) for r in where])]
        worse: dict[str, float] = {}
        better: dict[str, tuple[float, float]] = {}
        for c in CHECKPOINTS:
            worse[c] = _holm_dice(compare_sources(pooled, checkpoint=c, holm=True,
                                                  hypothesis="worse"))[0]
            better[c] = _holm_dice(compare_sources(pooled, checkpoint=c, holm=True,
                                                   hypothesis="better"))
        seeds_p = {c: stats.paired_test(np.zeros(len(d)), np.array(d), metric="dice",
                                        tests=("ttest",), hypothesis="better").p_ttest
                   for c, d in delta.items()}
        lines.append(Standing(
            arm=arm, reference=reference, rounds=[r.number for r in where],
            seeds=[r.seed(arm) for r in where], compiled=[_compiled(r.run(arm)) for r in where],
            delta=delta, mean={c: float(np.mean(d)) for c, d in delta.items()},
            better={c: sum(x > 0 for x in d) for c, d in delta.items()},
            p_worse_cases=worse, p_better_cases=better, p_better_seeds=seeds_p,
            r=[_median_step(r.run(arm)) / _median_step(r.run(reference)) for r in where],
            detectable={c: stats.detectable_difference(*stats.nan_summary(d)[1:])
                        for c, d in delta.items()}))
    _apply_rule(lines)
    return lines


def _apply_rule(lines: list[Standing]) -> None:
    by_arm = {line.arm: line for line in lines if line.reference == "sgd"}
    for line in lines:
        if line.reference != "sgd" or line.arm in CONTROLS | PRINTED or \
                not line.arm.startswith("hco-"):
            continue
        printed = by_arm.get("hco-printed-region" if line.arm.endswith("-region")
                             else "hco-printed")
        if printed is not None:
            at = dict(zip(printed.seeds, range(len(printed.seeds)), strict=True))
            line.above_printed = {
                c: [d > printed.delta[c][at[s]] for s, d in zip(line.seeds, line.delta[c],
                                                                 strict=True) if s in at]
                for c in CHECKPOINTS}
        seeds = len(set(line.seeds))
        if seeds < SEEDS_NEEDED:
            left = SEEDS_NEEDED - seeds
            out_of_reach = line.above_printed and any(
                sum(line.above_printed[c]) + left < 2 for c in CHECKPOINTS)
            if out_of_reach:
                line.rule = (f"not carried (no seed left can put it above the printed update "
                             f"on 2 of {SEEDS_NEEDED})")
                continue
            line.needs = {c: (-MARGIN * SEEDS_NEEDED - sum(line.delta[c])) / left
                          for c in CHECKPOINTS}
            who = "the last seed" if left == 1 else f"the {left} seeds left, on average,"
            line.rule = (f"open ({seeds} of {SEEDS_NEEDED} seeds; {who} must exceed ΔDice "
                         + ", ".join(f"{line.needs[c]:+.2f} {c}" for c in CHECKPOINTS) + ")")
            continue
        carried = (all(line.mean[c] > -MARGIN for c in CHECKPOINTS)
                   and all(line.p_worse_cases[c] >= ALPHA for c in CHECKPOINTS)
                   and all(sum(line.above_printed.get(c, [])) >= 2 for c in CHECKPOINTS))
        helps = (all(p < ALPHA for p in line.p_better_cases["best"])
                 and line.p_better_seeds["best"] < ALPHA)
        line.rule = "HCO helps" if carried and helps else "carried" if carried else "not carried"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def _detectable(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"


def _range(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    low, high = min(finite), max(finite)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def to_markdown(lines: list[Standing]) -> str:
    head = ["arm", "vs", "rounds (seeds)", "ΔDice best: mean (per seed)",
            "ΔDice last: mean (per seed)", "seeds better (best / last)",
            "p worse, cases (best / last)", "p better, cases (best)",
            "p better, seeds (best)", "detectable, seeds (best / last)",
            "above printed (best / last)", "r", "rule"]
    rows = []
    for line in lines:
        rounds = ", ".join(f"{n}{'c' if c else ''} ({s})"
                           for n, s, c in zip(line.rounds, line.seeds, line.compiled, strict=True))
        per = {c: f"{line.mean[c]:+.2f} ({', '.join(f'{d:+.2f}' for d in line.delta[c])})"
               for c in CHECKPOINTS}
        n = len(line.seeds)
        above = (" / ".join(f"{sum(line.above_printed[c])} of {len(line.above_printed[c])}"
                            for c in CHECKPOINTS) if line.above_printed else "-")
        wilcoxon, ttest = line.p_better_cases["best"]
        rows.append([
            line.arm, line.reference, rounds, per["best"], per["last"],
            f"{line.better['best']} / {line.better['last']} of {n}",
            f"{_p(line.p_worse_cases['best'])} / {_p(line.p_worse_cases['last'])}",
            f"{_p(wilcoxon)} / {_p(ttest)}", _p(line.p_better_seeds["best"]),
            " / ".join(_detectable(line.detectable.get(c, math.nan)) for c in CHECKPOINTS),
            above,
            _range(line.r), line.rule])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    legend = (
        "Dice in % points, each seed against its own round's reference (vs); rounds marked c "
        "ran compiled. p worse / better, cases: one-sided paired Wilcoxon (better: Wilcoxon / "
        "t-test) over the 20 test cases with the rounds pooled (runs averaged per case), "
        "Holm over the 4 metrics. p better, seeds: one-sided t-test over the per-seed "
        "differences; detectable: the gain that test finds with 80 % power given the "
        "seeds' spread (hco compare's Detectable (80%)). above printed: seeds where the "
        "arm's Δ is above the printed update's "
        "(same gradient split) at the same seed. r: median step norm over the round's "
        "reference's. rule: the pre-registered rule (scripts/ablation_standing.py, README), "
        f"for the HCO readings with {SEEDS_NEEDED} seeds.")
    return "\n".join(out) + "\n\n" + legend + "\n"


def short_markdown(lines: list[Standing]) -> str:
    """The README's table: per arm what it is, its seeds, mean ΔDice, seeds better, r, rule."""
    head = ["arm", "what", "vs", "seeds", "ΔDice best", "ΔDice last", "seeds better (best / last)",
            "r", "rule"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for line in lines:
        seeds = ", ".join(f"{s.lstrip('s')}{'c' if c else ''}"
                          for s, c in zip(line.seeds, line.compiled, strict=True))
        cells = [f"`{line.arm}`", WHAT.get(line.arm, ""), f"`{line.reference}`", seeds,
                 f"{line.mean['best']:+.2f}", f"{line.mean['last']:+.2f}",
                 f"{line.better['best']} / {line.better['last']} of {len(line.seeds)}",
                 _range(line.r), line.rule]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("results/ablation"))
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--readme", type=Path, help="rewrite the short table in this README")
    args = parser.parse_args(argv)
    try:
        lines = standing(find_rounds(args.root))
        readme = (between_markers(args.readme.read_text(encoding="utf-8"), BEGIN, END,
                                  short_markdown(lines)) if args.readme else None)
    except (HcoError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = to_markdown(lines)
    print(text, end="")
    if args.markdown:
        write_text(args.markdown, text)
    if args.json:
        write_json(args.json, [json_safe(asdict(line)) for line in lines])
    if readme is not None:
        write_text(args.readme, readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
