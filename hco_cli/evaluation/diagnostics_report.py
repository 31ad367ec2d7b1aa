"""The optimizer diagnostics of ``metrics.jsonl`` per arm, for ``hco compare --dynamics``.

``hco train`` logs, every ``diagnostics_every`` iterations, the step norm ||dw||, its ratio to a
plain gradient step, cos(g_L, g_U) and the mask's admitted fraction with its spread over tensors
(:mod:`hco_cli.optim.diagnostics`). Per arm the diagnosed steps of the training phases are
pooled over runs; the table gives medians (robust to the learning-rate decays) and the step-norm
ratio to the first arm: the factor r by which an arm's steps are longer, the one an
"``sgd`` at r·lr" control uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hco_cli.evaluation.compare_tables import Cell, ReportTable
from hco_cli.evaluation.saved_results import TrainStep

FIELDS: tuple[str, ...] = ("step_norm", "step_ratio", "cos_lu", "admitted", "admitted_std")
LABELS = {"step_norm": "||dw||", "step_ratio": "||dw|| / (lr ||g||)", "cos_lu": "cos(g_L, g_U)",
          "admitted": "admitted", "admitted_std": "admitted sd (tensors)"}


@dataclass
class ArmDiagnostics:
    """An arm's diagnosed steps: plot positions (epochs, phases end to end) and values."""

    name: str
    n_runs: int
    x: np.ndarray
    values: dict[str, np.ndarray]  # NaN where a step did not report the field

    @property
    def n_steps(self) -> int:
        return int(self.x.size)

    def median(self, key: str) -> float:
        v = self.values[key]
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else math.nan


def arm_diagnostics(name: str, runs: list[list[TrainStep]],
                    offsets: dict[str, int]) -> ArmDiagnostics | None:
    """Pool the diagnosed steps of an arm's runs (as read for the loss ratio); None when no
    run logged diagnostics."""
    steps = [s for run in runs for s in run if s.diagnostics is not None]
    if not steps:
        return None
    x = np.array([float(s.epoch) + offsets.get(s.phase, 0) for s in steps])
    values = {k: np.array([s.diagnostics[k] for s in steps if s.diagnostics is not None])
              for k in FIELDS}
    return ArmDiagnostics(name=name, n_runs=len(runs), x=x, values=values)


def diagnostics_table(arms: list[ArmDiagnostics]) -> ReportTable:
    """Medians per arm and the step-norm ratio r to the first arm."""
    ref = arms[0]
    table = ReportTable(
        title="Optimizer diagnostics (medians over diagnosed training steps)",
        columns=["Arm", "Steps", *[LABELS[k] for k in FIELDS], f"r (||dw|| / {ref.name})"],
        caption="r: median step norm relative to the first arm (the learning-rate factor of an "
                "equal-step control). admitted: fraction of elements the CO/HCO mask admitted.")
    ref_norm = ref.median("step_norm")
    for arm in arms:
        row = [Cell(arm.name), Cell(str(arm.n_steps))]
        row += [Cell(significant(arm.median(k))) for k in FIELDS]
        row.append(Cell("ref" if arm is ref else significant(ratio_to(arm, ref_norm))))
        table.rows.append(row)
    return table


def ratio_to(arm: ArmDiagnostics, ref_norm: float) -> float:
    return arm.median("step_norm") / ref_norm if ref_norm else math.nan


def significant(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}"


def summary_records(arms: list[ArmDiagnostics]) -> list[dict[str, float | int | str | None]]:
    """One JSON record per arm: the medians and r (None for NaN)."""
    ref_norm = arms[0].median("step_norm")
    out: list[dict[str, float | int | str | None]] = []
    for arm in arms:
        record: dict[str, float | int | str | None] = {"arm": arm.name, "runs": arm.n_runs,
                                                       "steps": arm.n_steps}
        for key in FIELDS:
            record[f"median_{key}"] = arm.median(key)
        record["step_norm_ratio"] = ratio_to(arm, ref_norm)
        out.append({k: None if isinstance(v, float) and not math.isfinite(v) else v
                    for k, v in record.items()})
    return out
