"""Rich tables of ``hco sweep``: the plan, a local sweep's outcomes, submissions, states."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from hco_cli.workflows.sweep_status import Progress, RunStatus

if TYPE_CHECKING:
    from hco_cli.workflows import sweep as lib
    from hco_cli.workflows.sweep_submit import Submission

_STATE_STYLE = {"done": "green", "running": "cyan", "pending": "yellow",
                "interrupted": "magenta", "failed": "bold red"}


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
    """``3 done, 1 failed``: how many runs are in each state, and when the running ones
    should end at their recent rates."""
    counts = {k: sum(s.state == k for s in states) for k in _STATE_STYLE}
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    left = [s.progress.minutes_left for s in states if s.progress is not None]
    known = [m for m in left if m is not None]
    if known:
        text += f"; the running runs end in about {max(known):.1f} min at their recent rates"
    return text


def progress_text(progress: Progress | None) -> str:
    """``8250/9500, 7.9 it/s, 2.6 min left``; ``-`` before a running run's first record."""
    if progress is None:
        return "-"
    parts = [f"{progress.iteration}/{progress.total or '?'}"]
    if progress.rate:
        rate = progress.rate
        parts.append(f"{rate:.1f} it/s" if rate >= 1 else f"{rate:.2g} it/s")
    left = progress.minutes_left
    if left is not None:
        parts.append(f"{left:.1f} min left")
    return ", ".join(parts)


def status_table(states: list[RunStatus], title: str) -> Table:
    table = Table(title=title)
    for name in ("run", "state", "job id", "progress", "detail"):
        table.add_column(name, overflow="fold")
    for s in states:
        style = _STATE_STYLE[s.state]
        table.add_row(escape(f"{s.arm}/{s.name}"), f"[{style}]{s.state}[/]", s.job_id or "-",
                      progress_text(s.progress) if s.state == "running" else "-",
                      escape(s.detail))
    return table
