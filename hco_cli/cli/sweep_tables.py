"""Rich tables of ``hco sweep``: the plan, a local sweep's outcomes, submissions, states."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from hco_cli.workflows.sweep_status import RunStatus

if TYPE_CHECKING:
    from hco_cli.workflows import sweep as lib
    from hco_cli.workflows.sweep_submit import Submission

_STATE_STYLE = {"done": "green", "running": "cyan", "pending": "yellow", "failed": "bold red"}


def plan_table(runs: list[lib.SweepRun]) -> Table:
    table = Table(title=f"sweep plan: {len(runs)} runs")
    for name in ("run dir", "arm", "optimizer", "seed", "fold", "status", "init_from"):
        table.add_column(name)
    for r in runs:
        table.add_row(escape(str(r.run_dir)), escape(r.arm), r.optimizer,
                      str(r.config.seed), r.fold or "all", r.status,
                      escape(str(r.init_from or "-")))
    return table


def summary_table(report: lib.SweepReport) -> Table:
    table = Table(title=f"sweep {report.out}")
    for name in ("run dir", "status", "best val dice", "test dice", "wall time"):
        table.add_column(name)
    for o in report.outcomes:
        status = o.outcome + (f": {o.message}" if o.message else "")
        table.add_row(escape(str(o.run.run_dir)), escape(status),
                      "-" if o.best_dice is None else f"{o.best_dice:.4f}",
                      "-" if o.test_dice is None else f"{o.test_dice:.4f}",
                      "-" if o.wall_seconds is None else f"{o.wall_seconds / 60:.1f} min")
    return table


def submission_table(submissions: list[Submission]) -> Table:
    table = Table(title=f"sweep jobs: {len(submissions)} runs")
    for name in ("run dir", "action", "job id", "after"):
        table.add_column(name)
    for s in submissions:
        table.add_row(escape(str(s.run.run_dir)), s.action, s.job_id or "-",
                      ", ".join(s.after) or "-")
    return table


def status_counts(states: list[RunStatus]) -> str:
    """``3 done, 1 failed``: how many runs are in each state."""
    counts = {k: sum(s.state == k for s in states) for k in _STATE_STYLE}
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def status_table(states: list[RunStatus], title: str) -> Table:
    table = Table(title=title)
    for name in ("run", "state", "job id", "detail"):
        table.add_column(name, overflow="fold")
    for s in states:
        style = _STATE_STYLE[s.state]
        table.add_row(escape(f"{s.arm}/{s.name}"), f"[{style}]{s.state}[/]", s.job_id or "-",
                      escape(s.detail))
    return table
