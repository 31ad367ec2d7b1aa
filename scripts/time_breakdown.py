"""Where a finished run's wall time went: training steps, validation, other pauses, start-up.

    python scripts/time_breakdown.py RUN [RUN ...]

Issue 20 asked why a 2K + 15K run took about 58 ms per iteration end to end when the benchmark
measures 42 ms. Each run logs a record per training iteration and one per validation, all with
``time`` (seconds since training started), and ``run.json`` holds the process's
``wall_seconds``. Per phase, the gaps between consecutive iteration records are classed as

- *steps*: a gap with no validation record inside it and not longer than ``--spike`` x the
  phase's median gap (the steady per-iteration cost, logging included);
- *validation*: a gap that contains validation records, less one median step;
- *pauses*: any other gap longer than ``--spike`` x the median (checkpoints, learning-rate
  changes, the CUDA-graph recording of a new shape, a neighbour process), less one median step;
- a gap that jumps over unlogged iterations counts as that many steps.

A validation record that gives each scored split's ``seconds`` (runs logged since
2026-12-02) also says how much of its validation went to splits other than the logged one
(``validation.also_select_on``, e.g. the test cases every 200 iterations): *scoring*.

Before the first record: start-up (data loading onto the device, model building, warm-up);
after the last: the end of the run (final checkpoints, summaries). ``wall_seconds`` minus the
last record's time is that tail, so steps + validation + pauses + start + tail = wall.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hco_cli.errors import HcoError
from hco_cli.evaluation.saved_results import read_run_records


@dataclass
class Phase:
    iterations: int = 0
    median_ms: float = 0.0
    steps: float = 0.0
    validation: float = 0.0
    validations: int = 0
    pauses: float = 0.0
    pause_count: int = 0
    scoring: dict[str, float] = field(default_factory=dict)  # in validation: other splits


@dataclass
class Breakdown:
    wall: float | None
    start: float
    tail: float | None
    phases: dict[str, Phase] = field(default_factory=dict)


def breakdown(records: list[dict], wall: float | None, spike: float = 5.0) -> Breakdown:
    """Classify the gaps between iteration records (module docstring)."""
    order = [r for r in records if "time" in r]
    is_val = [("dice" in r or "score" in r) for r in order]
    is_iter = [("iter" in r and "phase" in r and not v) for r, v in zip(order, is_val, strict=True)]
    iters = [r for r, it in zip(order, is_iter, strict=True) if it]
    if not iters:
        raise ValueError("no iteration records with a time")
    first = min(r["time"] for r in order)
    last = max(r["time"] for r in order)
    out = Breakdown(wall=wall, start=first, tail=None if wall is None else wall - last)
    # A validation record belongs to the gap between the iteration records around it; so do
    # its other splits' seconds (none for a validation after its phase's last iteration).
    scoring: dict[str, dict[str, float]] = {}
    owner, pending = None, []
    for r, it, v in zip(order, is_iter, is_val, strict=True):
        if it:
            if r["phase"] == owner:
                for val in pending:
                    bucket = scoring.setdefault(owner, {})
                    for split, sec in (val.get("seconds") or {}).items():
                        if split != val.get("split"):
                            bucket[split] = bucket.get(split, 0.0) + sec
            owner, pending = r["phase"], []
        elif v:
            pending.append(r)
    for name in dict.fromkeys(r["phase"] for r in iters):
        rows = [(i, r) for i, r in enumerate(order) if is_iter[i] and r["phase"] == name]
        gaps = []
        for (i0, a), (i1, b) in itertools.pairwise(rows):
            span = max(1, b["iter"] - a["iter"])
            vals = sum(is_val[i0 + 1:i1])
            gaps.append((b["time"] - a["time"], span, vals))
        phase = Phase(iterations=sum(s for _, s, _ in gaps) + 1)
        plain = [g / s for g, s, v in gaps if v == 0]
        median = statistics.median(plain) if plain else 0.0
        phase.median_ms = 1000 * median
        phase.scoring = scoring.get(name, {})
        for g, s, v in gaps:
            if v:
                phase.validations += v
                phase.validation += g - s * median
                phase.steps += s * median
            elif g > spike * s * median:
                phase.pause_count += 1
                phase.pauses += g - s * median
                phase.steps += s * median
            else:
                phase.steps += g
        out.phases[name] = phase
    return out


def report(run: Path, b: Breakdown) -> str:
    lines = [f"{run}: wall {b.wall:.1f} s" if b.wall is not None else f"{run}: wall unknown",
             f"  start-up (before the first record) {b.start:8.1f} s"]
    for name, p in b.phases.items():
        lines.append(
            f"  {name:<9} {p.iterations:6d} its, median {p.median_ms:6.1f} ms: steps "
            f"{p.steps:8.1f} s, validation {p.validation:7.1f} s ({p.validations} records"
            + "".join(f", of which {split} {sec:.1f} s" for split, sec in p.scoring.items())
            + f"), pauses {p.pauses:6.1f} s ({p.pause_count}); "
            f"{1000 * (p.steps + p.validation + p.pauses) / p.iterations:6.1f} ms/it all in")
    if b.tail is not None:
        lines.append(f"  end (after the last record)        {b.tail:8.1f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--spike", type=float, default=5.0,
                        help="a gap longer than this many median steps is a pause")
    args = parser.parse_args()
    for run in args.runs:
        try:
            records = [record for _, record in read_run_records(run)[1]]
            meta = run / "run.json"
            wall = (json.loads(meta.read_text(encoding="utf-8")).get("wall_seconds")
                    if meta.is_file() else None)
            print(report(run, breakdown(records, wall, args.spike)))
        except (HcoError, OSError, ValueError) as exc:
            sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
