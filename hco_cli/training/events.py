"""What the training loop reports while it runs and returns when it ends.

Kept apart from the loop so that worker processes (data-parallel training) and displays can
share these plain, picklable records without importing the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class ProgressEvent:
    """What the loop reports to a progress display (the CLI renders it; the library never prints).

    kinds: ``start`` (info: run summary), ``warning`` (message), ``phase`` (phase, total),
    ``step`` (iteration done within the phase), ``log`` (values: mean losses of the last block),
    ``val`` (values: dice, score, best), ``end`` (info: run.json).
    """

    kind: Literal["start", "warning", "phase", "step", "log", "val", "end"]
    phase: str = ""
    iteration: int = 0
    total: int = 0
    values: dict[str, float | None] = field(default_factory=dict)
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class RunResult:
    """Where the run is and how it ended."""

    run_dir: Path
    best_dice: float | None
    best_iteration: int | None
    iterations: dict[str, int]
    wall_seconds: float
    warnings: list[str]
    select_on: str = "val"
    finished: bool = True

