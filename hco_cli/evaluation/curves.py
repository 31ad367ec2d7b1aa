"""Validation curves between arms: the Dice that training logged at each validation, runs
paired by seed (and fold).

``hco train`` logs a validation record every ``validation.every`` iterations (``phase: val``,
``train_phase``, ``iter``, the selection split's ``dice`` and, under ``also``, the Dice of each
``also_select_on`` split). For each arm the curve is the mean over its runs at each logged
iteration; each later arm's runs are paired with the reference's by the seed and fold in
their ``run.json`` (``s1``, or ``L0U0-s1`` for a fold; the comparison uses the iterations and
pairs every arm has), and the paired differences (arm minus reference, Dice in % points) are
summarised per row (``bin`` validations pooled) and over each training phase: each pair's mean
over the phase (the area between the two curves divided by its length), their mean and standard
deviation over the pairs, the pairs where the arm is higher, and a one-sided paired t-test over
the pairs that the arm is higher.
Whether one optimizer reaches a given Dice sooner, or only ends higher, is read from the rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation import stats
from hco_cli.evaluation.compare import ArmSource, resolve_arms
from hco_cli.evaluation.compare_tables import (
    Cell,
    ReportTable,
    clean_record,
    fmt,
    fmt_p,
    labelled_tables,
    write_markdown,
    write_records,
)
from hco_cli.evaluation.saved_results import TRAIN_PHASES, read_run_info, read_run_records

Point = tuple[str, int]  # (training phase, iteration) of one validation


@dataclass
class RunCurve:
    """One run's logged Dice (fractions) on the compared split, by (phase, iteration)."""

    path: Path
    key: str  # the seed, and the fold where there is one: "s1", "L0U0-s1"
    dice: dict[Point, float]


@dataclass
class ArmCurves:
    name: str
    runs: dict[str, RunCurve]  # by key


@dataclass(frozen=True)
class Row:
    """One (phase, bin of validations): each arm's mean over its runs (fractions), and each
    later arm's per-pair differences to the reference (% points) with their mean and sd."""

    phase: str
    first: int  # iterations of the bin's first and last validation
    last: int
    means: dict[str, float]
    differences: dict[str, tuple[float, ...]]  # arm -> per pair, in the keys' order

    def diff_mean(self, arm: str) -> float:
        d = self.differences[arm]
        return float(np.mean(d)) if d else math.nan

    def diff_std(self, arm: str) -> float:
        d = self.differences[arm]
        return float(np.std(d, ddof=1)) if len(d) > 1 else math.nan


@dataclass(frozen=True)
class PhaseSummary:
    """An arm against the reference over one phase's common validations."""

    arm: str
    reference: str
    phase: str
    n_points: int
    keys: tuple[str, ...]
    differences: tuple[float, ...]  # per pair: mean paired difference over the phase, % points
    mean: float
    std: float
    n_better: int
    p_ttest: float  # one-sided paired t-test over the pairs, H1: the arm higher; NaN below 2
    rows_higher: int  # rows whose mean difference over the pairs is above zero
    n_rows: int


@dataclass
class Curves:
    split: str
    bin_width: int
    arms: list[ArmCurves]
    keys: tuple[str, ...]  # the pairs (seed, fold) every arm has
    points: list[Point] = field(default_factory=list)  # the validations every run has
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # arm -> keys left out
    rows: list[Row] = field(default_factory=list)
    summaries: list[PhaseSummary] = field(default_factory=list)

    def row_records(self) -> list[dict[str, Any]]:
        """One record per (row, arm): the arm's mean Dice (%) and, for later arms, the
        difference to the reference per pair and its mean and sd (% points)."""
        ref = self.arms[0].name
        out = []
        for row in self.rows:
            for arm in self.arms:
                record: dict[str, Any] = {"split": self.split, "phase": row.phase,
                                          "first_iter": row.first, "last_iter": row.last,
                                          "arm": arm.name, "runs": len(self.keys),
                                          "dice": row.means[arm.name] * 100}
                if arm.name == ref:
                    record.update(reference=None, diff=None, diff_std=None)
                else:
                    record.update(reference=ref, diff=row.diff_mean(arm.name),
                                  diff_std=row.diff_std(arm.name))
                    for key, d in zip(self.keys, row.differences[arm.name], strict=True):
                        record[f"diff_{key}"] = d
                out.append(record)
        return out


def _split_value(record: dict[str, Any], split: str | None,
                 where: str) -> tuple[str, float] | None:
    """The split a validation record is read on and its Dice: the record's own (selection)
    split, or ``split`` from the record or its ``also``; None where the record has no Dice on
    ``split`` (pre-training validations carry no ``also_select_on`` splits)."""
    own = record.get("split")
    also = record.get("also") or {}
    if split is None or split == own:
        value = record.get("dice")
        name = str(own)
    elif split in also:
        value, name = also[split], split
    else:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise DataError(f"{where}: Dice on {name!r} is not a number")
    return name, float(value)


def read_run_curve(run_dir: Path, split: str | None) -> tuple[str, RunCurve]:
    """A run's validation curve on ``split`` (None: the selection split) and that split's name."""
    if not run_dir.is_dir():
        raise DataError(f"--curves needs run folders; {run_dir} is not a folder")
    info = read_run_info(run_dir)
    path, records = read_run_records(run_dir)
    names: set[str] = set()
    logged: set[str] = set()
    dice: dict[Point, float] = {}
    for number, record in records:
        if record.get("phase") != "val":
            continue
        where = f"{path}, line {number}"
        phase = record.get("train_phase")
        if phase not in TRAIN_PHASES or not isinstance(record.get("iter"), int):
            raise DataError(f"{where}: validation record lacks train_phase or iter")
        logged |= {str(record.get("split")), *map(str, record.get("also") or {})}
        found = _split_value(record, split, where)
        if found is None:
            continue
        names.add(found[0])
        dice[(phase, record["iter"])] = found[1]  # a resumed run's repeat replaces the first
    if not logged:
        raise DataError(f"run {run_dir} logged no validation")
    if not dice:
        raise DataError(f"run {run_dir} logged no Dice on split {split!r} (logged: "
                        f"{', '.join(sorted(logged))}); --split names one of them")
    if len(names) > 1:
        raise DataError(f"run {run_dir} selected on several splits ({', '.join(sorted(names))})"
                        f"; --split names the one to compare")
    key = f"{info.fold}-s{info.seed}" if info.fold else f"s{info.seed}"
    return names.pop(), RunCurve(Path(run_dir), key, dice)


def _arm_curves(source: ArmSource, split: str | None) -> tuple[set[str], ArmCurves]:
    runs: dict[str, RunCurve] = {}
    names: set[str] = set()
    for member in source.members:
        name, curve = read_run_curve(member, split)
        names.add(name)
        if curve.key in runs:
            raise DataError(f"arm {source.name!r}: runs {runs[curve.key].path} and {member} "
                            f"have the same seed and fold ({curve.key}); --curves pairs runs "
                            f"by them")
        runs[curve.key] = curve
    return names, ArmCurves(source.name, runs)


def _order(point: Point) -> tuple[int, int]:
    return TRAIN_PHASES.index(point[0]), point[1]


def compare_curves(specs: Sequence[str], *, split: str | None = None,
                   bin_width: int = 1) -> Curves:
    """Each arm's validation curve and its paired difference to the first arm's."""
    if bin_width < 1:
        raise ConfigError(f"--bin must be a positive number of validations, got {bin_width}")
    sources = resolve_arms(specs)
    names: set[str] = set()
    arms = []
    for source in sources:
        found, arm = _arm_curves(source, split)
        names |= found
        arms.append(arm)
    if len(names) > 1:
        raise DataError(f"the arms validated on different splits ({', '.join(sorted(names))}); "
                        f"--split names the one to compare")
    keys = sorted(set.intersection(*(set(a.runs) for a in arms)))
    if not keys:
        raise DataError("no seed (and fold) is common to every arm; --curves pairs runs by the "
                        "seed and fold in their run.json")
    points = sorted(set.intersection(*(set(a.runs[k].dice) for a in arms for k in keys)),
                    key=_order)
    if not points:
        raise DataError("the runs share no validation iteration")
    unpaired = {a.name: sorted(set(a.runs) - set(keys)) for a in arms}
    result = Curves(split=names.pop(), bin_width=bin_width, arms=arms, keys=tuple(keys),
                    points=points, unpaired={a: k for a, k in unpaired.items() if k})
    by_phase: dict[str, list[int]] = defaultdict(list)
    for phase, iteration in points:
        by_phase[phase].append(iteration)
    ref = arms[0]
    for phase in sorted(by_phase, key=TRAIN_PHASES.index):
        iters = by_phase[phase]
        bins = [iters[i:i + bin_width] for i in range(0, len(iters), bin_width)]
        for block in bins:
            means = {a.name: float(np.mean([[a.runs[k].dice[(phase, i)] for i in block]
                                            for k in keys])) for a in arms}
            diffs = {a.name: tuple(_paired(ref, a, k, phase, block) for k in keys)
                     for a in arms[1:]}
            result.rows.append(Row(phase, block[0], block[-1], means, diffs))
        for arm in arms[1:]:
            result.summaries.append(_summary(result, ref, arm, phase, iters))
    return result


def _paired(ref: ArmCurves, arm: ArmCurves, key: str, phase: str, iters: list[int]) -> float:
    """The mean over ``iters`` of the arm's Dice minus the reference's, pair ``key``, in %
    points."""
    return float(np.mean([arm.runs[key].dice[(phase, i)] - ref.runs[key].dice[(phase, i)]
                          for i in iters])) * 100


def _summary(result: Curves, ref: ArmCurves, arm: ArmCurves, phase: str,
             iters: list[int]) -> PhaseSummary:
    diffs = np.array([_paired(ref, arm, k, phase, iters) for k in result.keys])
    test = stats.paired_test(np.zeros_like(diffs), diffs, metric="dice", tests=("ttest",),
                             hypothesis="better")
    rows = [r for r in result.rows if r.phase == phase]
    return PhaseSummary(
        arm=arm.name, reference=ref.name, phase=phase, n_points=len(iters),
        keys=result.keys, differences=tuple(float(d) for d in diffs),
        mean=float(diffs.mean()),
        std=float(diffs.std(ddof=1)) if diffs.size > 1 else math.nan,
        n_better=int((diffs > 0).sum()), p_ttest=test.p_ttest,
        rows_higher=sum(r.diff_mean(arm.name) > 0 for r in rows), n_rows=len(rows))


def _signed(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:+.2f}"


def _rows_table(result: Curves, labels: dict[str, str]) -> ReportTable:
    ref = result.arms[0].name
    others = [a.name for a in result.arms[1:]]
    where = "Iterations" if result.bin_width == 1 else f"Iterations ({result.bin_width} per row)"
    table = ReportTable(
        title=f"Dice on {result.split} over training (%, mean over {len(result.keys)} "
              f"run{'s' if len(result.keys) != 1 else ''} per arm)",
        columns=["Phase", where, *[labels[a.name] for a in result.arms],
                 *[f"{labels[o]} - {labels[ref]} per pair" for o in others]],
        caption=f"Runs paired by the seed and fold in their run.json ("
                f"{', '.join(result.keys)}); the {len(result.points)} validations every run "
                f"logged; differences in % points, arm minus {labels[ref]}, each pair's mean "
                f"over the row's validations, then their mean (sd).",
    )
    for row in result.rows:
        span = str(row.first) if row.first == row.last else f"{row.first}-{row.last}"
        cells = [Cell(row.phase), Cell(span)]
        cells += [Cell(fmt(row.means[a.name], scale=100)) for a in result.arms]
        for name in others:
            per_pair = ", ".join(_signed(d) for d in row.differences[name])
            spread = fmt(row.diff_std(name))
            cells.append(Cell(f"{per_pair}: {_signed(row.diff_mean(name))} ({spread})"
                              if len(result.keys) > 1 else per_pair))
        table.rows.append(cells)
    if result.unpaired:
        left = "; ".join(f"{labels[a]}: {', '.join(k)}" for a, k in result.unpaired.items())
        table.caption += f" Runs left out, without a partner in every arm: {left}."
    if len(table.rows) > 40 and result.bin_width == 1:
        table.caption += f" {len(table.rows)} rows: --bin N pools N validations per row."
    return table


def _summary_table(result: Curves, labels: dict[str, str]) -> ReportTable:
    ref = labels[result.arms[0].name]
    table = ReportTable(
        title=f"Curves against {ref} over each phase (Dice on {result.split})",
        columns=["Arm", "Phase", "Validations", "Per pair", "Mean (sd)", "Better",
                 "p t-test (pairs)", "Rows higher"],
        caption="Per pair: the mean paired difference over the phase's validations (% points; "
                "the area between the curves over the phase's length). p: one-sided paired "
                "t-test over the pairs, H1: the arm higher. Rows higher: rows whose mean "
                "difference is above zero.",
    )
    for s in result.summaries:
        table.rows.append([
            Cell(labels[s.arm]), Cell(s.phase), Cell(str(s.n_points)),
            Cell(", ".join(_signed(d) for d in s.differences)),
            Cell(f"{_signed(s.mean)} ({fmt(s.std)})"),
            Cell(f"{s.n_better}/{len(s.keys)}"), Cell(fmt_p(s.p_ttest)),
            Cell(f"{s.rows_higher}/{s.n_rows}")])
    return table


def curves_tables(result: Curves, *, compact: bool = False) -> list[ReportTable]:
    """The rows (each arm's mean, per-pair differences) and the per-phase summary;
    ``compact``: arms by short labels, with a legend first."""
    return labelled_tables([a.name for a in result.arms],
                           lambda labels: [_rows_table(result, labels),
                                           _summary_table(result, labels)], compact=compact)


def write_curves(
    result: Curves,
    *,
    json_path: Path | None = None,
    csv_path: Path | None = None,
    markdown_path: Path | None = None,
) -> None:
    """JSON: ``{"split", "bin_width", "pairs", "unpaired", "rows": [...], "summary": [...]}``;
    CSV: the row records; Markdown: the tables."""
    rows = result.row_records()
    payload = {
        "split": result.split,
        "bin_width": result.bin_width,
        "pairs": list(result.keys),
        "unpaired": result.unpaired,
        "rows": [clean_record(r) for r in rows],
        "summary": [clean_record({**vars(s), "keys": list(s.keys),
                                  "differences": list(s.differences)})
                    for s in result.summaries],
    }
    write_records(rows, json_path=json_path, csv_path=csv_path, json_payload=payload)
    if markdown_path is not None:
        write_markdown(markdown_path, curves_tables(result))
