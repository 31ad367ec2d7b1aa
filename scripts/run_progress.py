"""Progress of the runs of a sweep in flight: iteration, recent rate and projected finish.

    python scripts/run_progress.py RUNS_DIR [--window SECONDS]

For every RUNS_DIR/<arm>/<run>/metrics.jsonl (or .jsonl.gz): the last logged training iteration
of the planned total (the framework's pre-training + self-training iterations in the run's
config.yaml), the iterations per second over the last WINDOW seconds of its log (validation
pauses inside the window count, as they will in the rest of the run) and the minutes left at
that rate. A GPU session that holds the machine for a bounded time reads this to know whether
the runs it started can finish inside it. One line per run, then the latest projected finish.
"""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

TRAIN_PHASES = ("pretrain", "selftrain")


@dataclass(frozen=True)
class Progress:
    run: str
    iteration: int  # last logged training iteration, 0 before the first
    total: int | None  # planned iterations, None where the config does not say
    rate: float | None  # iterations per second over the window, None with too few rows

    @property
    def minutes_left(self) -> float | None:
        if self.total is None or not self.rate:
            return None
        return max(self.total - self.iteration, 0) / self.rate / 60


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the line the run is writing right now
                continue
    return rows


def planned_iterations(run: Path) -> int | None:
    """Pre-training + self-training iterations from the run's config.yaml."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    framework = config.get("framework") or {}
    counts = [framework.get(f"{phase}_iterations") for phase in TRAIN_PHASES]
    known = [c for c in counts if isinstance(c, int)]
    return sum(known) if known else None


def progress(run: Path, metrics: Path, window: float) -> Progress:
    train = [r for r in _rows(metrics)
             if r.get("phase") in TRAIN_PHASES and isinstance(r.get("time"), (int, float))]
    total = planned_iterations(run)
    if not train:
        return Progress(run.name, 0, total, None)
    last = train[-1]
    recent = [r for r in train if r["time"] >= last["time"] - window]
    first = recent[0]
    span = last["time"] - first["time"]
    rate = (last["iter"] - first["iter"]) / span if span > 0 else None
    return Progress(run.name, int(last["iter"]), total, rate)


def find(root: Path) -> list[tuple[Path, Path]]:
    """(run folder, metrics file) of every run under root/<arm>/<run>/."""
    found = []
    for run in sorted(p for p in root.glob("*/*") if p.is_dir()):
        for name in ("metrics.jsonl", "metrics.jsonl.gz"):
            if (run / name).is_file():
                found.append((run, run / name))
                break
    return found


def line(label: str, p: Progress) -> str:
    total = "?" if p.total is None else str(p.total)
    rate = "-" if p.rate is None else f"{p.rate:.1f} it/s"
    left = p.minutes_left
    eta = "-" if left is None else f"{left:.1f} min left"
    return f"{label} {p.iteration}/{total} {rate} {eta}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--window", type=float, default=300.0,
                        help="seconds of log the rate is taken over (default 300)")
    args = parser.parse_args()
    lefts = []
    for run, metrics in find(args.root):
        p = progress(run, metrics, args.window)
        print(line(str(run.relative_to(args.root)), p))
        if p.minutes_left is not None:
            lefts.append(p.minutes_left)
    if lefts:
        print(f"latest run finishes in about {max(lefts):.1f} min at these rates")


if __name__ == "__main__":
    main()
