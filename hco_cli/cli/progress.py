"""Progress displays laid out for the console's width.

``hco train`` shows the run summary, warnings and one bar per phase: at 80 columns the bar
itself is left out (count and percentage remain) so that elapsed time, time remaining and the
losses stay readable; losses and validation scores come last and are what is cut when space
runs out. ``hco prepare`` and ``hco predict`` show one bar over the cases, whose description
(the case id) is what gives way.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from hco_cli.training.events import ProgressEvent

WIDE = 110  # below this many columns the bar itself is left out
SUMMARY_KEYS = ("run_dir", "dataset", "framework", "optimizer", "optimizer_hyperparameters",
                "labeled", "unlabeled", "iterations", "validation_cases", "device", "processes",
                "seed")


def progress_columns(width: int) -> list[ProgressColumn]:
    """Columns of the training bar for a console ``width`` characters wide."""
    whole = Column(no_wrap=True)
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}", table_column=whole),
        TextColumn("{task.completed}/{task.total}", table_column=Column(no_wrap=True)),
        TaskProgressColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
        TextColumn("eta", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
        TextColumn("{task.fields[info]}",
                   table_column=Column(no_wrap=True, overflow="ellipsis", ratio=3)),
    ]
    if width >= WIDE:
        columns.insert(1, BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10)))
    return columns


def training_progress(console: Console, *, disable: bool = False) -> Progress:
    """The Progress of one ``hco train`` command on ``console``."""
    return Progress(*progress_columns(console.width), console=console, disable=disable,
                    expand=True)


class Display:
    """Renders the loop's progress events: summary, warnings, one bar per phase with losses."""

    def __init__(self, bar: Progress, *, console: Console, err_console: Console) -> None:
        self.bar, self.console, self.err_console = bar, console, err_console
        self.losses = ""
        self.task: TaskID | None = None

    def __call__(self, e: ProgressEvent) -> None:
        if e.kind == "start":
            table = Table.grid(padding=(0, 2))
            for key in SUMMARY_KEYS:
                table.add_row(f"[bold]{key}[/]", str(e.info.get(key)))
            self.console.print(table)
        elif e.kind == "warning":
            self.err_console.print(f"[bold yellow]warning:[/] {escape(e.message)}", soft_wrap=True)
        elif e.kind == "phase":
            self.task = self.bar.add_task(e.phase, total=e.total, completed=e.iteration, info="")
        elif e.kind == "step" and self.task is not None:
            self.bar.update(self.task, completed=e.iteration)
        elif e.kind == "log" and self.task is not None:
            v = e.values
            self.losses = f"L {v['loss_l']:.4f} U {v['loss_u']:.4f}"
            self.bar.update(self.task, info=f"{self.losses} lr {v['lr']:.2g}")
        elif e.kind == "val" and self.task is not None and e.values.get("score") is not None:
            self.bar.update(self.task, info=f"{self.losses} val {e.values['score']:.4f} "
                                            f"best {e.values['best']:.4f}")


def case_progress(console: Console, *, transient: bool = True) -> Progress:
    """One bar over the cases of ``hco prepare`` or ``hco predict``; times stay whole."""
    columns = (TextColumn("{task.description}",
                          table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
               BarColumn(bar_width=20), MofNCompleteColumn(table_column=Column(no_wrap=True)),
               TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)))
    return Progress(*columns, console=console, transient=transient)
