"""Compare arms (single runs, or groups of seeds / L x U folds) with paired tests per case.

An *arm* is given on the command line as a run folder, a ``summary.json`` written by
``hco evaluate --json``, or a group of them as a glob, optionally named ``NAME=GLOB``; a glob
component may list alternatives, ``round{1,9,10}`` (plain text each: no '/', wildcard or
nested brace inside), as a shell's braces do but inside one argument. Within a
group every case's metric is first averaged over the group's runs (NaN-aware), then arms are
paired by case id and summarised across cases: the protocol of the paper's Study 3 (average
over the 16 folds per test volume, then mean and std across volumes). The first arm is the
reference; each later arm is tested for being better than it, or, as asked, worse than it or
different from it (:mod:`hco_cli.evaluation.stats`).

Those per-case tests take the cases as the replicates: they cannot see how much a result moves
with the training seed (an A/A control, the same optimizer with other random streams, can
differ "significantly" from its twin over 20 cases). So, where arms are groups of runs, each
run's mean over the cases is also paired with the reference run of the same seed (the part of
the run's path that the arm's glob matched, e.g. ``all-s1`` of ``runs/sgd/*``; the runs that
leaves alone, or all where no such part is shared, by the seed in ``run.json``), giving
per-seed differences and a paired t-test over seeds (with the same alternative hypothesis as
the per-case tests).
"""

from __future__ import annotations

import glob
import itertools
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from hco_cli.errors import CheckpointError, ConfigError, DataError
from hco_cli.evaluation import stats
from hco_cli.evaluation.saved_results import (
    SCORING_KEYS,
    OptimizerSettings,
    RunInfo,
    Summary,
    read_optimizer_settings,
    read_run_info,
    read_summary,
)
from hco_cli.runs.layout import EVAL_DIR, SUMMARY_FILE, EvalCheckpoint, RunFolder

METRICS: tuple[str, ...] = ("dice", "jaccard", "asd", "hd95")  # the paper's column order
Checkpoint = EvalCheckpoint
# The family a Holm adjustment runs over: the 4 metrics of one arm and class, or every test
# of the comparison (all arms, classes and metrics).
HolmFamily = Literal["metrics", "all"]
_GLOB_CHARS = frozenset("*?[{")
_BRACES = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class ArmSource:
    """Where one arm's runs or summaries live, after resolving its command-line spec."""

    name: str
    spec: str
    members: tuple[Path, ...]


@dataclass
class Arm:
    """One arm's per-case metrics, already averaged over the runs of its group."""

    name: str
    labeled_unlabeled: str
    n_runs: int
    spacing_unit: str
    classes: tuple[str, ...]
    cases: tuple[str, ...]
    values: dict[tuple[str, str], np.ndarray]  # (class, metric) -> one value per case
    n_dropped: int = 0
    source: str = ""  # the path or glob it was read from (the legend of narrow tables)
    # Per run of the group: its pairing key (see _member_keys) -> (class, metric) -> per case.
    members: dict[str, dict[tuple[str, str], np.ndarray]] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)  # pairing key -> "seed N" (run.json)
    # Pairing key -> what the glob's wildcards matched inside its components ("2/1" for
    # "round2-h200/eager-s1" under "round[23]-h200/eager-s*"); the last resort of the pairing.
    captures: dict[str, str] = field(default_factory=dict)
    # How its predictions were made (saved_results.SCORING_KEYS), per key the values its
    # summaries record (one where they agree); keys no summary records are absent.
    scoring: dict[str, tuple[str, ...]] = field(default_factory=dict)
    empty_policy: str | None = None  # hco evaluate --empty of its summaries (None: unrecorded)
    # (class, metric) -> the run values that are NaN in cases where another run of the group
    # is finite (an empty prediction in one seed): the NaN-aware average leaves them out.
    partial_nan: dict[tuple[str, str], int] = field(default_factory=dict)
    # Pairing key -> the digests of the dataset preparation the run trained on (run.json's
    # dataset_identity; keys of runs that record none are absent).
    preparations: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # Its runs' optimizer settings (config.yaml), one per run with a run.json.
    settings: tuple[OptimizerSettings, ...] = ()
    # Whether the Optimizer column names the learning rate (_labelled_learning_rates).
    lr_in_label: bool = False

    @property
    def optimizer(self) -> str:
        """The Optimizer column: :func:`optimizer_label` of its runs' settings."""
        return optimizer_label(self.settings, with_lr=self.lr_in_label)


@dataclass(frozen=True)
class SeedDifference:
    """One arm vs the reference on one (class, metric), run by run: each run's mean over the
    paired cases minus that of the reference run with the same key (seed)."""

    arm: str
    reference: str
    class_: str
    metric: str
    keys: tuple[str, ...]
    differences: tuple[float, ...]
    mean: float
    std: float
    n_better: int
    p_ttest: float  # paired t-test over the seeds; NaN with fewer than 2
    hypothesis: stats.Hypothesis = "better"
    margin: float = 0.0  # the test's margin (stats module), in the metric's units
    # The true mean difference (arm minus reference, signed; either sign for two-sided) at
    # which this t-test over the seeds rejects with 80 % power at 0.05, given their standard
    # deviation: stats.detectable_mean.
    detectable: float = math.nan
    # One-sided 95 % bounds of the mean difference over the seeds (stats.mean_bounds): a true
    # difference below the first, or above the second, is excluded at 0.05.
    bounds: tuple[float, float] = (math.nan, math.nan)
    # A claimed gain (``hco compare --claim``, the metric's units, its better direction) and
    # the rule's verdict on it over these seeds (stats.claim_verdict); None without a claim.
    claim: float | None = None
    verdict: stats.ClaimVerdict | None = None

    @property
    def n_finite(self) -> int:
        """The seeds whose difference is a number (the denominator of ``n_better``)."""
        return sum(math.isfinite(d) for d in self.differences)

    def as_dict(self) -> dict[str, Any]:
        return {"level": "seed", "arm": self.arm, "reference": self.reference,
                "class": self.class_,
                "metric": self.metric, "keys": list(self.keys),
                "differences": [d if math.isfinite(d) else None for d in self.differences],
                "mean": self.mean, "std": self.std,
                "n_better": self.n_better, "p_ttest_seeds": self.p_ttest,
                "alternative": self.hypothesis, "margin": self.margin,
                "detectable_80": self.detectable if math.isfinite(self.detectable) else None,
                "bound_low_95": self.bounds[0] if math.isfinite(self.bounds[0]) else None,
                "bound_high_95": self.bounds[1] if math.isfinite(self.bounds[1]) else None,
                **self._claim_dict()}

    def _claim_dict(self) -> dict[str, Any]:
        if self.claim is None:
            return {}
        v = self.verdict
        return {"claim": self.claim,
                "claim_verdict": v.outcome("the claim") if v else None,
                "claim_gain": v.gain if v else None,
                "claim_excluded": v.excluded if v else None,
                "claim_p_seeds": v.p if v else None,
                "claim_upper_95": v.upper if v and math.isfinite(v.upper) else None}


@dataclass(frozen=True)
class Pairing:
    """How the runs of one arm pair with the reference's, worked out once per comparison.

    ``pairs``: (label, reference key, arm key) of the runs that share a key (and then the rest
    by :func:`_seed_pairs_of_the_rest`), else a run.json seed, else (a seed in several runs)
    what the wildcards matched, where that pairs them. ``repeated``: see
    :func:`_repeated_seeds` (then no pairs). ``unpaired``: where at least two runs pair (so
    that the per-seed test runs), the runs of either arm left without a partner
    ({arm name: [keys]}): the per-case tests average them in with the paired ones (where
    :func:`compare_sources`' default cut to the seeds every arm has did not apply, or with
    ``--all-runs``), the per-seed test leaves them out (a glob spanning one round too many, or
    a seed missing in one arm).
    ``reseeded``: (key, reference seed, arm seed) of the runs a shared key paired although
    their run.json seeds differ (an A/A control's offset seeds; else misnamed folders).
    """

    pairs: tuple[tuple[str, str, str], ...]
    repeated: dict[str, dict[str, list[str]]]
    unpaired: dict[str, list[str]]
    reseeded: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class ComparisonRecord:
    """One (arm vs reference, class, metric) result; ``as_dict`` is the JSON/CSV record."""

    arm: str
    reference: str
    class_: str
    metric: str
    result: stats.PairedResult
    p_holm_wilcoxon: float | None = None
    p_holm_ttest: float | None = None
    hypothesis: stats.Hypothesis = "better"
    margin: float = 0.0
    holm_family: HolmFamily | None = None  # the family the Holm p-values were adjusted over

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "level": "case",
            "arm": self.arm,
            "reference": self.reference,
            "class": self.class_,
            "metric": self.metric,
            "higher_is_better": stats.HIGHER_IS_BETTER[self.metric],
            "alternative": self.hypothesis,
            "margin": self.margin,
        }
        out.update(asdict(self.result))
        if self.p_holm_wilcoxon is not None or self.p_holm_ttest is not None:
            out["p_holm_wilcoxon"] = self.p_holm_wilcoxon
            out["p_holm_ttest"] = self.p_holm_ttest
            out["holm_family"] = self.holm_family
        return out


@dataclass
class Comparison:
    """Everything ``hco compare`` reports: arms (reference first) and one record per test."""

    arms: list[Arm]
    records: list[ComparisonRecord]
    tests: tuple[stats.TestName, ...]
    zero_method: stats.ZeroMethod
    holm: bool
    checkpoint: Checkpoint
    dropped_cases: dict[str, int] = field(default_factory=dict)
    seed_differences: list[SeedDifference] = field(default_factory=list)
    pairings: dict[str, Pairing] = field(default_factory=dict)  # arm name -> its pairing
    hypothesis: stats.Hypothesis = "better"
    margins: dict[str, float] = field(default_factory=dict)  # metric -> margin (its units)
    claims: dict[str, float] = field(default_factory=dict)  # metric -> claimed gain (its units)
    holm_family: HolmFamily = "metrics"
    # arm name -> the pairing keys of the runs left out (a seed not in every arm), with
    # common_seeds, or by default where the seeds pair the arms (left_out_auto)
    left_out: dict[str, list[str]] = field(default_factory=dict)
    left_out_auto: bool = False

    @property
    def classes(self) -> tuple[str, ...]:
        return self.arms[0].classes

    @property
    def n_cases(self) -> int:
        return len(self.arms[0].cases)

    @property
    def spacing_unit(self) -> str:
        return self.arms[0].spacing_unit

    def summary(self, arm: Arm, class_: str, metric: str) -> tuple[float, float, int]:
        """Mean, std (ddof=1) and count of the finite per-case values of one arm."""
        return stats.nan_summary(arm.values[(class_, metric)])


def _split_name(spec: str) -> tuple[str | None, str]:
    """``NAME=GLOB`` -> (NAME, GLOB); anything else (including paths with '=') -> (None, spec)."""
    if "=" in spec and not Path(spec).expanduser().exists():
        name, pattern = spec.split("=", 1)
        if name and "/" not in name and os.sep not in name and not _GLOB_CHARS & set(name):
            if not pattern:
                raise ConfigError(f"arm {name!r}: nothing after '=' (expected NAME=GLOB)")
            return name, pattern
    return None, spec


def _default_name(path: Path) -> str:
    """RUN for a run folder or RUN/eval/<ckpt>/summary.json; else the folder or file name."""
    if path.is_file() and path.name == SUMMARY_FILE:
        run = RunFolder.of_summary(path)
        if run is not None:
            return run.path.resolve().name or str(path)
        return path.parent.resolve().name or str(path)
    if path.is_file():
        return path.stem
    return path.resolve().name or str(path)


def resolve_arm(spec: str) -> ArmSource:
    """Resolve one command-line arm: a path, a glob, or ``NAME=GLOB``."""
    name, pattern = _split_name(spec)
    path = Path(pattern).expanduser()
    if path.exists():
        members: tuple[Path, ...] = (path,)
    elif _GLOB_CHARS & set(pattern):
        matches = sorted({m for p in expand_braces(pattern)
                          for m in glob.glob(os.path.expanduser(p), recursive=True)})
        if not matches:
            raise DataError(f"glob {pattern!r} matched nothing")
        members = tuple(Path(m) for m in matches)
    else:
        raise DataError(f"no such run folder or summary file: {pattern}")
    if name is None:
        name = _default_name(path) if len(members) == 1 and path.exists() else pattern
    return ArmSource(name=name, spec=spec, members=members)


def expand_braces(pattern: str) -> list[str]:
    """The patterns a glob with ``{a,b}`` alternatives stands for, in the order written."""
    groups = _BRACES.findall(pattern)
    rest = _BRACES.sub("", pattern)
    if "{" in rest or "}" in rest:
        raise ConfigError(f"glob {pattern!r}: unbalanced or nested braces")
    for group in groups:
        if "/" in group or os.sep in group or set("*?[") & set(group):
            raise ConfigError(f"glob {pattern!r}: the alternatives in {{{group}}} must be plain "
                              "text within one path component")
    parts = _BRACES.split(pattern)  # literal, group, literal, group, ..., literal
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def resolve_arms(specs: Sequence[str]) -> list[ArmSource]:
    """Resolve every arm; at least two are needed and their names must differ."""
    if len(specs) < 2:
        raise ConfigError(f"compare needs at least two arms, got {len(specs)}")
    sources = [resolve_arm(s) for s in specs]
    names = [s.name for s in sources]
    for i, src in enumerate(sources):
        if names.count(src.name) > 1 and src.name != src.spec:
            sources[i] = ArmSource(name=src.spec, spec=src.spec, members=src.members)
    seen: set[str] = set()
    for src in sources:
        if src.name in seen:
            raise ConfigError(f"arm {src.name!r} is given twice; name arms as NAME=GLOB")
        seen.add(src.name)
    return sources


def holds_one_evaluation(path: Path) -> bool:
    """Whether a group member is a summary (a file, or a folder holding only summary.json),
    which holds one evaluation, rather than a run folder with one per checkpoint."""
    if path.is_file():
        return True
    folder = RunFolder(path)
    return not folder.run_json.is_file() and not (path / EVAL_DIR).is_dir()


def _held_checkpoint(path: Path, summary: Summary) -> str | None:
    """The checkpoint a summary file holds the evaluation of: its folder's name under a run's
    eval/, else the one ``hco predict --evaluate`` recorded in it (a single checkpoint's name;
    None for an ensemble of several, or a file ``hco evaluate`` wrote, which names none)."""
    if RunFolder.of_summary(path) is not None and path.parent.name in get_args(Checkpoint):
        return path.parent.name
    return summary.checkpoint if summary.checkpoint in get_args(Checkpoint) else None


def _summary_file(path: Path) -> Path | None:
    """The summary a group member holding one evaluation is (a file, or a folder's
    summary.json); None for a run folder."""
    if path.is_file():
        return path
    return path / SUMMARY_FILE if holds_one_evaluation(path) and (
        path / SUMMARY_FILE).is_file() else None


def _names_no_checkpoint(path: Path) -> bool:
    """A summary that names no checkpoint: neither a run's eval/<checkpoint>/ folder holds it
    nor does it record one."""
    file = _summary_file(path)
    return file is not None and _held_checkpoint(file, read_summary(file)) is None


def _member(path: Path, checkpoint: Checkpoint) -> tuple[Summary, RunInfo | None]:
    """Read one group member: a run folder's chosen evaluation, or a summary file (refused
    where it names another checkpoint than ``checkpoint``)."""
    file = _summary_file(path)
    if file is not None:
        summary = read_summary(file)
        # RUN/eval/<checkpoint>/summary.json: take optimizer and L/U from RUN/run.json.
        owner = RunFolder.of_summary(file)
        held = _held_checkpoint(file, summary)
        if held is not None and held != checkpoint:
            raise ConfigError(f"{file} is the {held!r} evaluation, not the {checkpoint!r} one "
                              f"asked for: compare with --checkpoint {held}"
                              + (", or name the run folder" if owner else ""))
        in_run = owner is not None and owner.run_json.is_file()
        return summary, (read_run_info(owner.path) if owner and in_run else None)
    if holds_one_evaluation(path):
        raise DataError(f"{path} is neither a run folder (no run.json or eval/) nor a summary")
    folder = RunFolder(path)
    target = folder.summary(checkpoint)
    if not target.is_file():
        found = list(folder.summaries())
        which = "" if checkpoint == "best" else f" --checkpoint {checkpoint}"
        have = (f"available: {', '.join(found)}" if found else
                f"write it with hco predict {path}{which} --evaluate")
        raise CheckpointError(f"run {path} has no {checkpoint!r} evaluation ({target}); {have}")
    run = read_run_info(path) if folder.run_json.is_file() else None
    return read_summary(target), run


def _same(values: dict[str, Any], what: str, context: str) -> Any:
    """Return the common value of ``values`` (label -> value) or raise naming the conflict."""
    items = list(values.items())
    for label, value in items[1:]:
        if value != items[0][1]:
            first = items[0][0]
            raise DataError(
                f"{what} differ {context}: {first} has {items[0][1]}, {label} has {value}"
            )
    return items[0][1]


def _same_recorded(policies: dict[str, str | None], context: str) -> str | None:
    """The empty-mask convention the summaries that record one share (None where none does):
    an empty prediction scores 0 distance under ``bcp`` and NaN under ``nan``, so means and
    tests over a mix would compare different things."""
    known = {k: v for k, v in policies.items() if v is not None}
    if not known:
        return None
    return _same({k: f"--empty {v}" for k, v in known.items()},
                 "empty-mask conventions (hco evaluate --empty)", context).removeprefix("--empty ")


def align_cases(
    case_sets: dict[str, Sequence[str]], *, intersect: bool, context: str
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Common case ids (sorted) and, per label, how many of its cases were dropped."""
    sets = {label: set(cases) for label, cases in case_sets.items()}
    common = set.intersection(*sets.values())
    union = set.union(*sets.values())
    if common != union and not intersect:
        for label, cases in sets.items():
            missing = sorted(union - cases)
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise DataError(
                    f"case sets differ {context}: {label} lacks {len(missing)} case(s) "
                    f"({shown}); use --intersect to pair the common cases"
                )
    if not common:
        raise DataError(f"no case is common {context}")
    return tuple(sorted(common)), {label: len(c - common) for label, c in sets.items()}


def optimizer_label(settings: Sequence[OptimizerSettings], *, with_lr: bool = False) -> str:
    """The Optimizer column of an arm: each distinct setting of its runs, '/'-joined ('-' when
    no run.json is known)."""
    return "/".join(sorted({s.label(with_lr=with_lr) for s in settings})) or "-"


def _labelled_learning_rates(arms: Sequence[Arm]) -> None:
    """Name the learning rate in every arm's Optimizer label where the runs compared were not
    all trained at one (an equal-step control is the plain optimizer at another rate)."""
    if len({s.lr for arm in arms for s in arm.settings}) > 1:
        for arm in arms:
            arm.lr_in_label = True


def _member_keys(source: ArmSource) -> list[str]:
    """Each member's pairing key: the path components that the glob's wildcard components
    matched (``all-s1`` for ``runs/sgd/*``, ``la8-s2`` for ``results/la8-s*/sgd``); the whole
    path where the glob and the path differ in depth (``**``) or for a single path."""
    pattern = Path(_split_name(source.spec)[1]).expanduser()
    wild = [bool(_GLOB_CHARS & set(part)) for part in pattern.parts]
    keys = []
    for member in source.members:
        parts = member.parts
        if any(wild) and len(parts) == len(wild):
            keys.append("/".join(p for p, w in zip(parts, wild, strict=True) if w))
        else:
            keys.append(str(member))
    return keys


def _glob_regex(part: str) -> re.Pattern[str]:
    """One glob component as a regular expression with a group per wildcard or brace."""
    out, i = [], 0
    while i < len(part):
        char = part[i]
        close = part.find("]", i + 2) if char == "[" else -1
        brace = part.find("}", i + 1) if char == "{" else -1
        if char == "*":
            out.append("(.*)")
        elif brace != -1:
            alternatives = part[i + 1:brace].split(",")
            out.append("(" + "|".join(re.escape(a) for a in alternatives) + ")")
            i = brace
        elif char == "?":
            out.append("(.)")
        elif close != -1:
            body = part[i + 1:close]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"([{body}])")
            i = close
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _member_captures(source: ArmSource) -> list[str | None]:
    """Per member, the wildcards' matches within the glob's components, joined per component
    and the components by '/'; None where the depth differs (``**``) or nothing is wild."""
    pattern = Path(_split_name(source.spec)[1]).expanduser()
    regexes = [_glob_regex(part) if _GLOB_CHARS & set(part) else None for part in pattern.parts]
    out: list[str | None] = []
    for member in source.members:
        matches = [(rx.fullmatch(p) if rx else None) for p, rx in zip(member.parts, regexes,
                                                                       strict=False)]
        if len(member.parts) != len(regexes) or not any(regexes) or any(
                rx is not None and m is None for m, rx in zip(matches, regexes, strict=True)):
            out.append(None)
            continue
        out.append("/".join("".join(m.groups()) for m in matches if m is not None))
    return out


def load_arm(source: ArmSource, *, checkpoint: Checkpoint = "best", intersect: bool = False) -> Arm:
    """Load an arm and average each case's metrics over the group's runs (NaN-aware)."""
    loaded = [_member(p, checkpoint) for p in source.members]
    summaries = {str(s.path): s for s, _ in loaded}
    if len(summaries) < len(loaded):
        raise ConfigError(f"arm {source.name!r} lists the same summary twice")
    context = f"within arm {source.name!r}"
    classes = _same({k: s.classes for k, s in summaries.items()}, "class sets", context)
    unit = _same({k: s.spacing_unit for k, s in summaries.items()}, "spacing units", context)
    policy = _same_recorded({k: s.empty_policy for k, s in summaries.items()}, context)
    cases, dropped = align_cases(
        {k: tuple(s.cases) for k, s in summaries.items()}, intersect=intersect, context=context
    )
    values: dict[tuple[str, str], np.ndarray] = {}
    partial_nan: dict[tuple[str, str], int] = {}
    keys = _member_keys(source)
    members: dict[str, dict[tuple[str, str], np.ndarray]] = {k: {} for k in keys}
    for cls in classes:
        for metric in METRICS:
            stack = np.array([[s.cases[c][cls][metric] for c in cases] for s in summaries.values()])
            nan = np.isnan(stack)
            if partial := int(nan[:, ~nan.all(axis=0)].sum()):
                partial_nan[(cls, metric)] = partial
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN case -> NaN
                values[(cls, metric)] = np.nanmean(stack, axis=0)
            for key, row in zip(keys, stack, strict=True):
                members[key][(cls, metric)] = row
    runs = [r for _, r in loaded if r is not None]
    settings = tuple(read_optimizer_settings(r) for r in runs)
    return Arm(
        name=source.name,
        labeled_unlabeled=", ".join(sorted({f"{r.labeled}/{r.unlabeled}" for r in runs})) or "-",
        settings=settings,
        n_runs=len(loaded),
        spacing_unit=unit,
        classes=classes,
        cases=cases,
        values=values,
        n_dropped=max(dropped.values()),
        source=_split_name(source.spec)[1],
        members=members,
        seeds={k: f"seed {r.seed}" for k, (_, r) in zip(keys, loaded, strict=True)
               if r is not None},
        captures={k: c for k, c in zip(keys, _member_captures(source), strict=True)
                  if c is not None},
        scoring={k: v for k in SCORING_KEYS if (v := tuple(dict.fromkeys(
            s.scoring[k] for s in summaries.values() if k in s.scoring)))},
        empty_policy=policy,
        partial_nan=partial_nan,
        preparations={k: r.dataset_identity for k, (_, r) in zip(keys, loaded, strict=True)
                      if r is not None and r.dataset_identity is not None},
    )


def pair_arms(arms: list[Arm], *, intersect: bool = False) -> dict[str, int]:
    """Restrict every arm to the common cases (in place); return the dropped count per arm."""
    _same({a.name: a.classes for a in arms}, "class sets", "between arms")
    _same({a.name: a.spacing_unit for a in arms}, "spacing units", "between arms")
    _same_recorded({a.name: a.empty_policy for a in arms}, "between arms")
    cases, dropped = align_cases(
        {a.name: a.cases for a in arms}, intersect=intersect, context="between arms"
    )
    for arm in arms:
        index = {c: i for i, c in enumerate(arm.cases)}
        take = np.array([index[c] for c in cases], dtype=np.int64)
        arm.values = {k: v[take] for k, v in arm.values.items()}
        arm.members = {key: {k: v[take] for k, v in member.items()}
                       for key, member in arm.members.items()}
        arm.cases = cases
        dropped[arm.name] += arm.n_dropped
    return dropped


def _records(
    arms: list[Arm], *, tests: tuple[stats.TestName, ...], zero_method: stats.ZeroMethod,
    holm: HolmFamily | None, hypothesis: stats.Hypothesis, margins: dict[str, float],
) -> list[ComparisonRecord]:
    ref = arms[0]
    records: list[ComparisonRecord] = []
    for arm in arms[1:]:
        for cls in ref.classes:
            results = [
                stats.paired_test(
                    ref.values[(cls, m)],
                    arm.values[(cls, m)],
                    metric=m,
                    tests=tests,
                    zero_method=zero_method,
                    hypothesis=hypothesis,
                    margin=margins.get(m, 0.0),
                )
                for m in METRICS
            ]
            records += [
                ComparisonRecord(arm.name, ref.name, cls, m, r, None, None, hypothesis,
                                 margins.get(m, 0.0))
                for m, r in zip(METRICS, results, strict=True)
            ]
    return _holm_adjusted(records, holm) if holm is not None else records


def _holm_adjusted(records: list[ComparisonRecord],
                   family: HolmFamily) -> list[ComparisonRecord]:
    """``records`` with Holm-adjusted p-values, per test, within each family: the 4 metrics of
    one (arm vs reference, class) (``metrics``), or every record of the comparison, all arms,
    classes and metrics together (``all``)."""
    groups: dict[tuple[str, str] | None, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec.arm, rec.class_) if family == "metrics" else None, []).append(i)
    out = list(records)
    for members in groups.values():
        hw = stats.holm([records[i].result.p_wilcoxon for i in members])
        ht = stats.holm([records[i].result.p_ttest for i in members])
        for i, pw, pt in zip(members, hw, ht, strict=True):
            out[i] = replace(records[i], p_holm_wilcoxon=pw, p_holm_ttest=pt,
                             holm_family=family)
    return out


def _repeated_seeds(ref: Arm, arm: Arm) -> dict[str, dict[str, list[str]]]:
    """Where ``arm`` and ``ref`` share no pairing key and must pair by run.json seed, the seeds
    that one of them holds in more than one run ({arm name: {"seed N": [keys]}}): with those
    there is no unambiguous pairing, so no per-seed differences, and the runs of a seed are
    averaged per case like any others (folds of one seed; or, pooled across rounds, a seed run
    twice), unless what the globs' wildcards matched pairs them (:func:`_capture_pairs`)."""
    if set(ref.members) & set(arm.members) or _capture_pairs(ref, arm):
        return {}
    out: dict[str, dict[str, list[str]]] = {}
    for a in (ref, arm):
        keys_of: dict[str, list[str]] = {}
        for key, seed in a.seeds.items():
            keys_of.setdefault(seed, []).append(key)
        repeated = {seed: keys for seed, keys in keys_of.items() if len(keys) > 1}
        if repeated:
            out[a.name] = repeated
    return out


def _capture_pairs(ref: Arm, arm: Arm) -> list[tuple[str, str, str]]:
    """(capture, reference key, arm key) where the wildcards' matches pair every run of both
    arms one to one and the paired runs' run.json seeds agree (rounds pooled by a glob such as
    ``round[23]/eager-s*`` against ``round[23]/graphs-s*``); else nothing."""
    by_capture = []
    for a in (ref, arm):
        inverse = {capture: key for key, capture in a.captures.items()}
        if len(inverse) != len(a.members):
            return []
        by_capture.append(inverse)
    if by_capture[0].keys() != by_capture[1].keys():
        return []
    pairs = [(c, by_capture[0][c], by_capture[1][c]) for c in sorted(by_capture[0])]
    if any(ref.seeds.get(r, "?") != arm.seeds.get(a, "?") for _, r, a in pairs):
        return []
    return pairs


# The fewest seeds two arms must share to be read as a seed-paired study, where runs of a seed
# another arm lacks are left out by default (:func:`pairing`'s ``unpaired``, and
# :func:`default_seed_cut` for the pooled --dynamics): with one shared seed the arms may be one
# reference run beside a group, and cutting would drop the reference's other seeds unasked.
PAIRED_STUDY_SEEDS = 2


def pairing(ref: Arm, arm: Arm) -> Pairing:
    """Pair the runs of ``arm`` with those of ``ref`` (:class:`Pairing`)."""
    repeated = _repeated_seeds(ref, arm)
    common = sorted(set(ref.members) & set(arm.members))
    captured = _capture_pairs(ref, arm)
    if common:
        pairs = [(k, k, k) for k in common] + _seed_pairs_of_the_rest(ref, arm, common)
    elif captured and any(len(set(a.seeds.values())) < len(a.seeds) for a in (ref, arm)):
        pairs = captured
    elif repeated:
        pairs = []  # a seed twice in one arm (folds): no unambiguous pairing
    else:
        by_seed_ref = {v: k for k, v in ref.seeds.items()}
        by_seed_arm = {v: k for k, v in arm.seeds.items()}
        shared = sorted(set(by_seed_ref) & set(by_seed_arm), key=_seed_number)
        pairs = [(s, by_seed_ref[s], by_seed_arm[s]) for s in shared]
    unpaired: dict[str, list[str]] = {}
    if len(pairs) >= PAIRED_STUDY_SEEDS:
        for a, paired in ((ref, {r for _, r, _ in pairs}), (arm, {k for _, _, k in pairs})):
            alone = sorted(set(a.members) - paired)
            if alone:
                unpaired[a.name] = alone
    reseeded = tuple((k, ref.seeds[k], arm.seeds[k]) for k in common
                     if k in ref.seeds and k in arm.seeds and ref.seeds[k] != arm.seeds[k])
    return Pairing(tuple(pairs), repeated, unpaired, reseeded)


def _seed_number(label: str) -> int:
    """The N of a ``"seed N"`` label (so that seed 10 sorts after seed 2)."""
    return int(label.rsplit(" ", 1)[1])


def _seed_pairs_of_the_rest(ref: Arm, arm: Arm, keyed: list[str]) -> list[tuple[str, str, str]]:
    """(seed, reference key, arm key) of the runs no shared key pairs, by run.json seed where
    the seed is in one such run of each arm and in none of the runs the keys paired (a seed
    re-run for one arm in another session: ``s3/sgd/all-s3`` with ``s4/sgd-hco/all-s3``)."""
    taken = {a.seeds.get(k) for a in (ref, arm) for k in keyed}

    def rest(a: Arm) -> dict[str, str]:
        keys_of: dict[str, list[str]] = {}
        for key in a.members:
            if key not in keyed and key in a.seeds:
                keys_of.setdefault(a.seeds[key], []).append(key)
        return {seed: keys[0] for seed, keys in keys_of.items()
                if len(keys) == 1 and seed not in taken}

    left, right = rest(ref), rest(arm)
    return [(seed, left[seed], right[seed])
            for seed in sorted(left.keys() & right.keys(), key=_seed_number)]


def seed_differences(
    arms: list[Arm], pairings: dict[str, Pairing], *, hypothesis: stats.Hypothesis = "better",
    margins: dict[str, float] | None = None, claims: dict[str, float] | None = None,
) -> list[SeedDifference]:
    """Per (arm, class, metric): each paired run's mean over the cases where both runs are
    finite, minus the reference run's, and the t-test of ``hypothesis`` over them, with the
    verdict on the metric's claimed gain where ``claims`` has one; empty for arms without two
    paired runs (``pairings``: each arm's :class:`Pairing`, by name)."""
    ref = arms[0]
    out: list[SeedDifference] = []
    for arm in arms[1:]:
        pairs = pairings[arm.name].pairs
        if len(pairs) < 2:
            continue
        for cls in ref.classes:
            for metric in METRICS:
                diffs = []
                for _, ref_key, arm_key in pairs:
                    a = ref.members[ref_key][(cls, metric)]
                    b = arm.members[arm_key][(cls, metric)]
                    keep = np.isfinite(a) & np.isfinite(b)
                    diffs.append(float(np.mean(b[keep] - a[keep])) if keep.any() else math.nan)
                d = np.array(diffs)
                finite = d[np.isfinite(d)]
                sign = 1.0 if stats.HIGHER_IS_BETTER[metric] else -1.0
                margin = (margins or {}).get(metric, 0.0)
                result = stats.paired_test(np.zeros_like(d), d, metric=metric, tests=("ttest",),
                                           hypothesis=hypothesis, margin=margin)
                std = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
                claim = (claims or {}).get(metric)
                verdict = (None if claim is None else stats.claim_verdict(
                    finite, claim, higher_is_better=stats.HIGHER_IS_BETTER[metric]))
                out.append(SeedDifference(
                    arm=arm.name, reference=ref.name, class_=cls, metric=metric,
                    keys=tuple(label for label, _, _ in pairs), differences=tuple(diffs),
                    mean=float(np.mean(finite)) if finite.size else math.nan, std=std,
                    n_better=int((sign * finite > 0).sum()), p_ttest=result.p_ttest,
                    hypothesis=hypothesis, margin=margin,
                    detectable=stats.detectable_mean(
                        std, int(finite.size), metric=metric, hypothesis=hypothesis,
                        margin=margin),
                    bounds=stats.mean_bounds(finite), claim=claim, verdict=verdict))
    return out


def compare_runs(
    specs: Sequence[str],
    *,
    checkpoint: Checkpoint = "best",
    tests: Sequence[stats.TestName] = stats.TESTS,
    hypothesis: stats.Hypothesis = "better",
    margins: dict[str, float] | None = None,
    **options: Any,
) -> Comparison:
    """Load, group, pair and test the arms given as command-line specs (first = reference);
    the options are :func:`compare_sources`'s, those that need no arm checked first."""
    _checked_margins(checkpoint, tests, hypothesis, margins)
    return compare_sources(resolve_arms(specs), checkpoint=checkpoint, tests=tests,
                           hypothesis=hypothesis, margins=margins, **options)


def _checked_family(family: str) -> HolmFamily:
    if family not in get_args(HolmFamily):
        raise ConfigError(f"unknown Holm family {family!r}; expected one of "
                          f"{', '.join(get_args(HolmFamily))}")
    return family  # type: ignore[return-value]


def _checked_per_metric(given: dict[str, float] | None, what: str,
                        check: Callable[[float], None]) -> dict[str, float]:
    """Per-metric values (``--margin``, ``--claim``): each for a known metric and passing
    ``check``; returned in the metrics' order."""
    given = given or {}
    for metric, value in given.items():
        if metric not in METRICS:
            raise ConfigError(f"a {what} for unknown metric {metric!r}; expected one of "
                              f"{', '.join(METRICS)}")
        check(value)
    return {m: given[m] for m in METRICS if m in given}


def _checked_claims(claims: dict[str, float] | None) -> dict[str, float]:
    """The claimed gains, each a known metric's positive improvement, in the metrics' order."""
    return _checked_per_metric(claims, "claim", stats.check_claim)


def _checked_margins(
    checkpoint: Checkpoint = "best",
    tests: Sequence[stats.TestName] = stats.TESTS,
    hypothesis: stats.Hypothesis = "better",
    margins: dict[str, float] | None = None,
) -> dict[str, float]:
    """Check the options that need no arm; the margins that apply, in the metrics' order."""
    if checkpoint not in get_args(Checkpoint):
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; expected one of "
                          f"{', '.join(get_args(Checkpoint))}")
    stats.check_hypothesis(hypothesis)
    given = _checked_per_metric(margins, "margin",
                                lambda margin: stats.check_margin(margin, hypothesis))
    if not tests:
        raise ConfigError("no statistical test selected")
    return {m: value for m, value in given.items() if value}


def _run_seed(member: Path) -> str | None:
    """The ``seed N`` of a run folder or of the run a summary belongs to (run.json); None for
    a summary outside a run."""
    file = _summary_file(member)
    folder = RunFolder.of_summary(file) if file is not None else RunFolder(member)
    if folder is None or not folder.run_json.is_file():
        return None
    return f"seed {read_run_info(folder.path).seed}"


def on_common_seeds(sources: Sequence[ArmSource]) -> tuple[list[ArmSource], dict[str, list[str]]]:
    """The sources cut to the runs whose run.json seed every arm has, and per arm the pairing
    keys of the runs left out; one run per seed in each arm (folds of one seed, or a seed run
    twice, cannot be matched by seed alone)."""
    keyed = []  # per source: its members' seed -> (pairing key, member)
    for source in sources:
        by_seed: dict[str, tuple[str, Path]] = {}
        for key, member in zip(_member_keys(source), source.members, strict=True):
            seed = _run_seed(member)
            if seed is None:
                raise ConfigError(f"--common-seeds matches runs by the seed in their run.json; "
                                  f"{member} has none")
            if seed in by_seed:
                raise ConfigError(f"--common-seeds needs one run per seed; arm {source.name!r} "
                                  f"has {seed} in {by_seed[seed][0]}, {key}")
            by_seed[seed] = (key, member)
        keyed.append(by_seed)
    common = set.intersection(*(set(by_seed) for by_seed in keyed))
    if not common:
        raise ConfigError("--common-seeds: the arms share no seed")
    cut, left_out = [], {}
    for source, by_seed in zip(sources, keyed, strict=True):
        if dropped := [key for seed, (key, _) in by_seed.items() if seed not in common]:
            left_out[source.name] = dropped
        cut.append(replace(source, members=tuple(
            member for seed, (_, member) in by_seed.items() if seed in common)))
    return cut, left_out


def default_seed_cut(sources: Sequence[ArmSource]
                     ) -> tuple[list[ArmSource], dict[str, list[str]]] | None:
    """The default cut of the pooled comparisons (--dynamics): :func:`on_common_seeds` where
    every run has a seed of its own, the arms share :data:`PAIRED_STUDY_SEEDS` or more and
    some run is left out; None otherwise (every run pooled), as :func:`compare_sources` decides
    for the per-case tests."""
    try:
        cut, left_out = on_common_seeds(sources)
    except ConfigError:  # a run without a seed, a seed twice, or no seed shared
        return None
    shared = len(cut[0].members)
    return (cut, left_out) if left_out and shared >= PAIRED_STUDY_SEEDS else None


def _seeds_every_arm_has(sources: Sequence[ArmSource], arms: Sequence[Arm]
                         ) -> tuple[list[ArmSource], dict[str, list[str]]] | None:
    """The default cut of :func:`compare_sources`: the sources cut to the seeds every arm has
    (:func:`default_seed_cut`) where the arms pair by run.json seed (no seed in two runs of an
    arm, no pair of runs whose seeds differ) and some arm has runs no other pairs with (a seed
    still to run, or one too many); None where that does not hold or nothing would be cut."""
    pairings = [pairing(arms[0], arm) for arm in arms[1:]]
    if not any(p.unpaired for p in pairings) or any(p.repeated or p.reseeded
                                                     for p in pairings):
        return None
    return default_seed_cut(sources)


def compare_sources(
    sources: Sequence[ArmSource],
    *,
    checkpoint: Checkpoint = "best",
    tests: Sequence[stats.TestName] = stats.TESTS,
    zero_method: stats.ZeroMethod = "wilcox",
    holm: bool = False,
    holm_family: HolmFamily = "metrics",
    intersect: bool = False,
    hypothesis: stats.Hypothesis = "better",
    margins: dict[str, float] | None = None,
    common_seeds: bool | None = None,
    claims: dict[str, float] | None = None,
) -> Comparison:
    """Load, group, pair and test arms already resolved (first = reference; a caller can list
    the runs of an arm itself, e.g. the rounds where an arm ran); ``hypothesis`` is the
    alternative of every test, per case and over seeds; ``margins`` (metric -> margin in the
    metric's stored units: Dice as a fraction) shift its tests as :mod:`stats` describes;
    ``common_seeds``: True: every arm keeps only the runs of the seeds all arms have
    (:func:`on_common_seeds`, an error where seeds cannot match them), so that the per-case
    tests, which average each arm's runs per case, compare like with like; None (default): the
    same where the arms pair by seed and some runs have no partner
    (:func:`_seeds_every_arm_has`, ``left_out_auto``), else every run; False: every run, the
    per-case tests averaging the runs without a partner in (noted). ``claims`` (metric ->
    a claimed gain in its stored units and better direction, e.g. a paper's) adds the verdict
    of :func:`stats.claim_verdict` over the seeds to the per-seed differences."""
    margins = _checked_margins(checkpoint, tests, hypothesis, margins)
    claims = _checked_claims(claims)
    if checkpoint != "best" and all(_names_no_checkpoint(m) for s in sources for m in s.members):
        raise ConfigError(f"checkpoint {checkpoint!r} applies to run folders and their "
                          "eval/<checkpoint>/ summaries, and every arm here is a summary that "
                          "names no checkpoint")
    left_out: dict[str, list[str]] = {}
    if common_seeds:
        sources, left_out = on_common_seeds(sources)
    arms = [load_arm(s, checkpoint=checkpoint, intersect=intersect) for s in sources]
    cut = _seeds_every_arm_has(sources, arms) if common_seeds is None else None
    if cut is not None:
        sources, left_out = cut
        arms = [load_arm(s, checkpoint=checkpoint, intersect=intersect) for s in sources]
    _labelled_learning_rates(arms)
    dropped = pair_arms(arms, intersect=intersect)
    pairings = {arm.name: pairing(arms[0], arm) for arm in arms[1:]}
    test_tuple = tuple(tests)
    return Comparison(
        arms=arms,
        records=_records(arms, tests=test_tuple, zero_method=zero_method,
                         holm=_checked_family(holm_family) if holm else None,
                         hypothesis=hypothesis, margins=margins),
        tests=test_tuple,
        zero_method=zero_method,
        holm=holm,
        holm_family=holm_family,
        checkpoint=checkpoint,
        dropped_cases=dropped,
        seed_differences=seed_differences(arms, pairings, hypothesis=hypothesis,
                                          margins=margins, claims=claims),
        pairings=pairings,
        hypothesis=hypothesis,
        margins=margins,
        claims=claims,
        left_out=left_out,
        left_out_auto=cut is not None,
    )


def compare_checkpoints(
    specs: Sequence[str], checkpoints: Sequence[Checkpoint], **options: Any,
) -> list[Comparison]:
    """:func:`compare_runs` at each checkpoint in turn (the same arms, pairing and tests), as a
    paper's table puts the validation-selected, last and test-selected results side by side.
    Several checkpoints need run folders: a summary holds one evaluation."""
    if not checkpoints:
        raise ConfigError("no checkpoint given")
    for i, checkpoint in enumerate(checkpoints):
        if checkpoint in checkpoints[:i]:
            raise ConfigError(f"checkpoint {checkpoint!r} given twice")
    results = [compare_runs(specs, checkpoint=checkpoints[0], **options)]
    if len(checkpoints) > 1:
        for source in resolve_arms(specs):
            for member in source.members:
                if holds_one_evaluation(member):
                    raise ConfigError(f"{member} is a summary, which holds one evaluation; "
                                      "several checkpoints need run folders")
    return results + [compare_runs(specs, checkpoint=c, **options) for c in checkpoints[1:]]
