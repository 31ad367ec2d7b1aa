"""Loss-ratio dynamics between arms (the paper's Study 5).

For every training step with a finite ``ratio`` (L_U / L_L, as logged by ``hco train``) the
ratio is pooled per epoch (or bin of epochs) over all runs of an arm (seeds or L x U folds),
giving the mean over those steps and its standard error. Consecutive steps of a run can be
correlated, so the standard error is not sd/sqrt(steps) but the batch-means one
(:func:`~hco_cli.evaluation.stats.batch_means_sem`): each run's steps of the bin, in logged
order, are cut into contiguous batches (about sqrt(steps per run) of them, none spanning two
runs) and the spread of all the runs' batch means gives the SE. It is NaN ("-" in the tables,
null in JSON) for a bin with a single step. Each later arm is compared with the first epoch by
epoch (difference of means, its SE sqrt(SE_a^2 + SE_b^2) assuming independent arms) and on
average over the epochs both arms have.

The JSON/CSV keys ``sem_ratio`` and ``sem_diff`` keep their names, so that files written before
stay readable, but hold these batch-means standard errors (earlier files: sd/sqrt(steps), with
the steps of all runs taken as independent).
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
from hco_cli.evaluation.compare import (
    ArmSource,
    default_seed_cut,
    on_common_seeds,
    resolve_arms,
)
from hco_cli.evaluation.compare_tables import (
    Cell,
    ReportTable,
    clean_record,
    fmt,
    labelled_tables,
    left_out_note,
    write_markdown,
    write_records,
)
from hco_cli.evaluation.diagnostics_report import (
    ArmDiagnostics,
    arm_diagnostics,
    diagnostics_table,
    summary_records,
)
from hco_cli.evaluation.saved_results import TRAIN_PHASES, TrainStep, read_train_steps
from hco_cli.evaluation.stats import batch_means_sem

EpochKey = tuple[str, int]  # (phase, first epoch of the bin)


@dataclass(frozen=True)
class EpochStat:
    """Ratio statistics of one (phase, epoch bin), pooled over an arm's runs; ``sem``: the
    batch-means standard error of ``mean`` (module docstring)."""

    phase: str
    epoch: int
    x: float  # position on the plot's epoch axis (phases laid end to end)
    n_steps: int
    mean: float
    sem: float


@dataclass
class ArmDynamics:
    name: str
    n_runs: int
    epochs: list[EpochStat]
    step_x: np.ndarray  # plot position of each finite-ratio step
    step_ratio: np.ndarray


@dataclass(frozen=True)
class DynamicsSummary:
    """How one arm's ratio differs from the reference's over their common epochs."""

    arm: str
    reference: str
    n_epochs: int
    mean_reference: float
    mean_arm: float
    mean_diff: float
    rel_diff: float
    epochs_higher: int


@dataclass
class Dynamics:
    arms: list[ArmDynamics]
    summaries: list[DynamicsSummary]
    bin_width: int
    diffs: dict[tuple[str, EpochKey], tuple[float, float]] = field(default_factory=dict)
    # The optimizer diagnostics of the arms whose runs logged them (hco >= the readings).
    diagnostics: list[ArmDiagnostics] = field(default_factory=list)
    # arm name -> the runs left out (a seed not in every arm), with common_seeds, or by
    # default where every run has a seed of its own and the arms share two or more
    # (default_seed_cut; left_out_auto)
    left_out: dict[str, list[str]] = field(default_factory=dict)
    left_out_auto: bool = False

    def epoch_records(self) -> list[dict[str, Any]]:
        """One record per (arm, phase, epoch bin), with the difference to the reference."""
        ref = self.arms[0].name
        out = []
        for arm in self.arms:
            for e in arm.epochs:
                diff, sem_diff = self.diffs.get((arm.name, (e.phase, e.epoch)), (None, None))
                record = {"arm": arm.name, "runs": arm.n_runs, "phase": e.phase}
                record.update(epoch=e.epoch, n_steps=e.n_steps, mean_ratio=e.mean, sem_ratio=e.sem)
                record.update(reference=None if arm.name == ref else ref)
                record.update(diff_vs_reference=diff, sem_diff=sem_diff)
                out.append(record)
        return out


def _arm_steps(source: ArmSource) -> list[list[TrainStep]]:
    runs = []
    for member in source.members:
        if not member.is_dir():
            raise DataError(f"--dynamics needs run folders; {member} is not a folder")
        runs.append(read_train_steps(member))
    return runs


def _phase_offsets(all_steps: list[TrainStep]) -> dict[str, int]:
    """Epoch offsets that lay phases end to end when a later phase restarts its epochs."""
    offsets: dict[str, int] = {}
    end = -1
    for phase in TRAIN_PHASES:
        epochs = [s.epoch for s in all_steps if s.phase == phase]
        if not epochs:
            continue
        offsets[phase] = end + 1 - min(epochs) if min(epochs) <= end else 0
        end = max(epochs) + offsets[phase]
    return offsets


def _binned(run: list[TrainStep], bin_width: int) -> dict[EpochKey, list[float]]:
    """One run's ratios per (phase, epoch bin), each list in the run's logged (time) order."""
    out: dict[EpochKey, list[float]] = defaultdict(list)
    for s in run:
        out[(s.phase, s.epoch // bin_width * bin_width)].append(s.ratio)
    return out


def _arm_dynamics(
    name: str, runs: list[list[TrainStep]], offsets: dict[str, int], bin_width: int
) -> ArmDynamics:
    finite = [[s for s in run if math.isfinite(s.ratio)] for run in runs]
    steps = [s for run in finite for s in run]
    if not steps:
        raise DataError(f"arm {name!r}: no training step with a finite loss ratio")
    pooled: dict[EpochKey, list[list[float]]] = defaultdict(list)
    for run in finite:
        for key, ratios in _binned(run, bin_width).items():
            pooled[key].append(ratios)
    epochs = []
    for phase, epoch in sorted(pooled, key=_phase_order):
        mean, sem, n = batch_means_sem(pooled[(phase, epoch)])
        centre = epoch + offsets[phase] + (bin_width - 1) / 2
        epochs.append(EpochStat(phase, epoch, centre, n, mean, sem))
    return ArmDynamics(
        name=name,
        n_runs=len(runs),
        epochs=epochs,
        step_x=np.array([s.epoch + offsets[s.phase] for s in steps], dtype=np.float64),
        step_ratio=np.array([s.ratio for s in steps], dtype=np.float64),
    )


def _against_reference(
    ref: ArmDynamics, arm: ArmDynamics, diffs: dict[tuple[str, EpochKey], tuple[float, float]]
) -> DynamicsSummary:
    """Fill the per-epoch differences of ``arm`` to ``ref`` and summarise them."""
    ref_by = {(e.phase, e.epoch): e for e in ref.epochs}
    common = [(e, ref_by[(e.phase, e.epoch)]) for e in arm.epochs if (e.phase, e.epoch) in ref_by]
    for e, r in common:
        diffs[(arm.name, (e.phase, e.epoch))] = (e.mean - r.mean, math.hypot(e.sem, r.sem))
    if not common:
        return DynamicsSummary(arm.name, ref.name, 0, math.nan, math.nan, math.nan, math.nan, 0)
    mean_ref = float(np.mean([r.mean for _, r in common]))
    mean_arm = float(np.mean([e.mean for e, _ in common]))
    diff = mean_arm - mean_ref
    return DynamicsSummary(
        arm=arm.name,
        reference=ref.name,
        n_epochs=len(common),
        mean_reference=mean_ref,
        mean_arm=mean_arm,
        mean_diff=diff,
        rel_diff=diff / mean_ref if mean_ref != 0 else math.nan,
        epochs_higher=sum(e.mean > r.mean for e, r in common),
    )


def compare_dynamics(specs: Sequence[str], *, bin_width: int = 1,
                     common_seeds: bool | None = None) -> Dynamics:
    """Per-epoch L_U/L_L of each arm and its difference to the first arm; ``common_seeds``
    True: each arm pools only the runs of the seeds every arm has (:func:`on_common_seeds`, an
    error where seeds cannot match them); None (default): the same where the arms are a
    seed-paired study (:func:`default_seed_cut`, the per-case tests' rule); False: every run."""
    if bin_width < 1:
        raise ConfigError(f"--bin must be a positive number of epochs, got {bin_width}")
    sources = resolve_arms(specs)
    left_out: dict[str, list[str]] = {}
    auto = False
    if common_seeds:
        sources, left_out = on_common_seeds(sources)
    elif common_seeds is None and (cut := default_seed_cut(sources)) is not None:
        (sources, left_out), auto = cut, True
    steps = {s.name: _arm_steps(s) for s in sources}
    everything = [st for runs in steps.values() for run in runs for st in run]
    offsets = _phase_offsets([st for st in everything if math.isfinite(st.ratio)])
    arms = [_arm_dynamics(n, runs, offsets, bin_width) for n, runs in steps.items()]
    result = Dynamics(arms=arms, summaries=[], bin_width=bin_width, left_out=left_out,
                      left_out_auto=auto)
    result.summaries = [_against_reference(arms[0], a, result.diffs) for a in arms[1:]]
    found = (arm_diagnostics(name, runs, offsets) for name, runs in steps.items())
    result.diagnostics = [d for d in found if d is not None]
    return result


def _phase_order(key: EpochKey) -> tuple[int, int]:
    return TRAIN_PHASES.index(key[0]), key[1]


def _epoch_table(result: Dynamics, labels: dict[str, str]) -> ReportTable:
    ref = result.arms[0].name
    others = [a.name for a in result.arms[1:]]
    unit = "Epoch" if result.bin_width == 1 else f"Epochs (bins of {result.bin_width})"
    table = ReportTable(
        title="L_U / L_L per epoch (mean ± batch-means SE)",
        columns=["Phase", unit, *[labels[a.name] for a in result.arms],
                 *[f"{labels[o]} - {labels[ref]}" for o in others]],
        caption="Only steps with a finite ratio count; runs of an arm are pooled per epoch. "
        "±: standard error from batch means (each run's steps cut into about sqrt(steps per "
        "run) contiguous blocks, whose means' spread over all runs gives the SE), which allows "
        "for autocorrelation between neighbouring steps; '-' for a single step. Differences: "
        "± sqrt(SE_a^2 + SE_b^2), the arms taken as independent.",
    )
    by_arm = {a.name: {(e.phase, e.epoch): e for e in a.epochs} for a in result.arms}
    for key in sorted({k for stats_ in by_arm.values() for k in stats_}, key=_phase_order):
        row = [Cell(key[0]), Cell(str(key[1]))]
        for arm in result.arms:
            e = by_arm[arm.name].get(key)
            text = f"{fmt(e.mean, digits=3)} ± {fmt(e.sem, digits=3)} (n={e.n_steps})" if e else "-"
            row.append(Cell(text))
        for name in others:
            d = result.diffs.get((name, key))
            row.append(Cell(f"{d[0]:+.3f} ± {fmt(d[1], digits=3)}" if d else "-"))
        table.rows.append(row)
    if len(table.rows) > 60 and result.bin_width == 1:
        table.caption += f" {len(table.rows)} rows: --bin N pools N epochs per row."
    return table


def _summary_table(result: Dynamics, labels: dict[str, str]) -> ReportTable:
    first = result.arms[0]
    default = " (--all-runs pools every run)" if result.left_out_auto else None
    table = ReportTable(
        title=f"Loss-ratio difference vs {labels[first.name]}",
        columns=[
            "Arm",
            "Runs",
            "Steps",
            "Mean ratio",
            "Common epochs",
            "Diff",
            "Rel. diff",
            "Higher",
        ],
        caption="Mean ratio: mean of an arm's per-epoch means. Diff, rel. diff and the count of "
        "epochs where the arm is higher use the epochs both arms have."
        + "".join(f" {left_out_note(labels[name], keys, default=default)}."
                  for name, keys in result.left_out.items()),
    )
    vs: list[DynamicsSummary | None] = [None, *result.summaries]
    for arm, s in zip(result.arms, vs, strict=True):
        texts = [labels[arm.name], str(arm.n_runs), str(arm.step_ratio.size)]
        texts.append(fmt(float(np.mean([e.mean for e in arm.epochs])), digits=3))
        if s is None:
            texts += ["ref", "-", "-", "-"]
        else:
            rel = "-" if not math.isfinite(s.rel_diff) else f"{s.rel_diff * 100:+.1f}%"
            diff = "-" if not math.isfinite(s.mean_diff) else f"{s.mean_diff:+.3f}"
            texts += [str(s.n_epochs), diff, rel]
            texts.append(f"{s.epochs_higher}/{s.n_epochs}")
        table.rows.append([Cell(t) for t in texts])
    return table


def dynamics_tables(result: Dynamics, *, compact: bool = False) -> list[ReportTable]:
    """Per-epoch table (mean ± batch-means SE per arm, differences to the first arm), a
    summary and, where runs logged them, the optimizer diagnostics; ``compact``: arms by short
    labels (:func:`arm_labels`), with a legend first."""
    def build(labels: dict[str, str]) -> list[ReportTable]:
        tables = [_epoch_table(result, labels), _summary_table(result, labels)]
        if result.diagnostics:
            tables.append(diagnostics_table(result.diagnostics))
        return tables

    return labelled_tables([a.name for a in result.arms], build, compact=compact)


def write_dynamics(
    result: Dynamics,
    *,
    json_path: Path | None = None,
    csv_path: Path | None = None,
    markdown_path: Path | None = None,
) -> None:
    """JSON: ``{"bin_width", "epochs": [...], "summary": [...], "diagnostics": [...]}``;
    CSV: the per-epoch records; Markdown: the tables."""
    epochs = result.epoch_records()
    payload = {
        "bin_width": result.bin_width,
        "epochs": [clean_record(r) for r in epochs],
        "summary": [clean_record(vars(s)) for s in result.summaries],
        "diagnostics": summary_records(result.diagnostics) if result.diagnostics else [],
        **({"left_out": result.left_out} if result.left_out else {}),
    }
    write_records(epochs, json_path=json_path, csv_path=csv_path, json_payload=payload)
    if markdown_path is not None:
        write_markdown(markdown_path, dynamics_tables(result))
