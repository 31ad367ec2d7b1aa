#!/usr/bin/env python3
"""Issue 15's next GPU batch, from the runs committed under ``results/la-full``.

    python3 scripts/study_next.py [ROOT] [--runs N] [--budget S] [--session NAME]
    python3 scripts/study_next.py [ROOT] --list

The study's plan is :data:`PLAN`: every (labeled count, arm, seed) the issue and the screening
ablation's rule call for, in the order the batches run (DEVELOPERS.md gives the reasons). This
script finds the planned runs that no committed run folder holds yet (a run folder's
``run.json`` gives its arm, seed and labeled count), takes the first ``N`` (two fit a one-GPU
session: about 11 minutes each), and prints the ``device_ablation.sh start`` line that runs
them one after the other (the second through ``THEN_*``), then the ``collect_round.py`` lines
that commit what comes back (``--budget``: no more runs than the session's device time
left holds). It prints nothing to run once the plan and :data:`EXTRA` are done.

Where the plan leaves a batch room (its last run, or none), the batch takes the next run of
:data:`EXTRA`, beyond the issue's plan.

``--list`` prints instead every committed run as a markdown table (labeled count, arm, seed,
unlabeled cases, wall time, device, folder), from the runs' ``run.json``: the run list the
issue's closing note gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

CONFIGS = {8: "sample_configs/la_bcp_study1.yaml", 4: "sample_configs/la_bcp_study1_4l.yaml"}
# One arms file per arm run alone (the pair files run two arms of one seed).
ARMS_FILES = {"sgd-co": "sample_configs/arms/la_full_co.yaml",
              "hco-r1": "sample_configs/arms/la_full_r1.yaml",
              "hco-r3": "sample_configs/arms/la_full_pair3.yaml"}
SEEDS = (1, 2, 3)
# (labeled, arm) in the order the batches run; each for seeds 1-3 unless done already.
ORDER = ((8, "sgd"), (8, "sgd-hco"), (4, "sgd"), (4, "sgd-hco"), (8, "sgd-co"), (8, "hco-r1"),
         (4, "hco-r1"), (8, "hco-r3"))
PLAN = tuple((labeled, arm, seed) for labeled, arm in ORDER for seed in SEEDS)
# Beyond the plan, run where a session has room once the plan is done or its last
# batch leaves a slot: R3 at 4 labeled (the second reading the screening carried, run at 8
# labeled only by the plan), then `sgd-co` at 4 labeled (the "if budget allows").
EXTRA_ORDER = ((4, "hco-r3"), (4, "sgd-co"))
EXTRA = tuple((labeled, arm, seed) for labeled, arm in EXTRA_ORDER for seed in SEEDS)
SETTINGS = "COMPILE=reduce-overhead DETERMINISTIC=1 SHARE_PRETRAINING=0 LCC_CHECK=0"
# Device seconds, from the sessions' notes (one H200): the six to ten staging calls and the
# start (135-232 s held), one full-protocol run with its last-iterate and test-selected scoring
# (10.0-11.2 min, rounded up), and the collecting call's margin. `--budget` sizes a batch with
# them, so that a session that lost time to refused calls starts only what it can bring back.
STAGING_S, RUN_S, COLLECT_S = 240, 700, 60


def runs_that_fit(budget_s: float) -> int:
    """How many chained runs (0, 1 or 2) finish and come back within ``budget_s``."""
    return max(0, min(2, int((budget_s - STAGING_S - COLLECT_S) // RUN_S)))


@dataclass(frozen=True)
class Planned:
    labeled: int
    arm: str
    seed: int

    def __str__(self) -> str:
        return f"{self.arm} s{self.seed} {self.labeled}l"


@dataclass(frozen=True)
class Committed:
    """One committed run of the study, as its run.json records it."""
    planned: Planned
    unlabeled: int
    wall_seconds: float
    device: str
    folder: Path


def committed_runs(root: Path) -> list[Committed]:
    """Every committed run under ``root``, in the plan's order (by label count as ORDER
    takes it, then seed; arms outside the plan last), each with its recorded wall time."""
    out = []
    for info in root.glob("*l/*/*/*/run.json"):
        if info.parent.parent.name.startswith("_"):
            continue
        record = json.loads(info.read_text(encoding="utf-8"))
        planned = Planned(int(record["labeled"]), info.parent.parent.name, int(record["seed"]))
        out.append(Committed(planned, int(record.get("unlabeled", -1)),
                             float(record.get("wall_seconds", "nan")),
                             str(record.get("device", "?")), info.parent.relative_to(root)))
    order = {key: i for i, key in enumerate((*ORDER, *EXTRA_ORDER))}

    def key(run: Committed) -> tuple[int, int, str]:
        return (order.get((run.planned.labeled, run.planned.arm), len(order)),
                run.planned.seed, str(run.folder))
    return sorted(out, key=key)


def done_runs(root: Path) -> set[Planned]:
    """Every committed run of the study: ``<L>l/<session>/<arm>/<run>/run.json``."""
    return {run.planned for run in committed_runs(root)}


def runs_table(runs: list[Committed]) -> str:
    """The committed runs as a markdown table."""
    head = ("| labeled | arm | seed | unlabeled | wall (min) | device | folder |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")
    return "\n".join([head] + [
        f"| {r.planned.labeled} | `{r.planned.arm}` | {r.planned.seed} | "
        f"{r.unlabeled if r.unlabeled >= 0 else '?'} | {r.wall_seconds / 60:.1f} | "
        f"{r.device} | `{r.folder.as_posix()}` |" for r in runs])


def missing(root: Path, plan: tuple[tuple[int, str, int], ...] = PLAN) -> list[Planned]:
    """The runs of ``plan`` (:data:`PLAN`, :data:`EXTRA`, or both) no committed run holds,
    in the plan's order."""
    done = done_runs(root)
    return [p for p in (Planned(*t) for t in plan) if p not in done]


def batch_lines(runs: list[Planned], session: str) -> list[str]:
    """The start line for ``runs`` (one, or two chained) and the collect lines."""
    first, *rest = runs
    if first.arm not in ARMS_FILES or any(r.arm not in ARMS_FILES for r in rest):
        raise ValueError(f"no one-arm file for {', '.join(map(str, runs))}: the "
                         "printed pair runs from la_full_pair1.yaml, two arms of one seed "
                         "(DEVELOPERS.md)")
    start = f"CONFIG={CONFIGS[first.labeled]}"
    collect = [f"python scripts/collect_round.py <files_at>/ablation.tar.gz "
               f"results/la-full/{first.labeled}l/{session} --full-protocol"]
    if rest:
        (then,) = rest
        start += (f" THEN_CONFIG={CONFIGS[then.labeled]} THEN_ARMS={ARMS_FILES[then.arm]}"
                  f" THEN_SEEDS={then.seed}")
        folder = session if then.labeled != first.labeled else f"{session}-then"
        collect.append(f"python scripts/collect_round.py <files_at>/ablation-then.tar.gz "
                       f"results/la-full/{then.labeled}l/{folder} --full-protocol")
    start += (f" {SETTINGS} bash scripts/device_ablation.sh start {ARMS_FILES[first.arm]}"
              f" {first.seed} 1 1")
    return [start, *collect]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("results/la-full"))
    parser.add_argument("--runs", type=int, default=2, choices=(1, 2),
                        help="runs in the batch (two fit a one-GPU session)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="device time left (the status tool's budget_left_s) before "
                             "staging: the batch shrinks to the runs that fit it")
    parser.add_argument("--session", default="<session>",
                        help="the session's folder name under <L>l/ (e.g. 2026-12-04)")
    parser.add_argument("--list", action="store_true",
                        help="print every committed run as a markdown table instead")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: no such folder", file=sys.stderr)
        return 1
    if args.list:
        print(runs_table(committed_runs(args.root)))
        return 0
    todo = missing(args.root, PLAN + EXTRA)  # the committed runs read once
    planned = [p for p in todo if (p.labeled, p.arm, p.seed) in PLAN]
    extra = todo[len(planned):]
    print(f"{len(PLAN) - len(planned)} of {len(PLAN)} planned runs done; left: "
          + (", ".join(map(str, planned)) or "none"))
    if extra:
        print(f"beyond the plan, where a batch has room: {', '.join(map(str, extra))}")
    runs = args.runs
    if todo and args.budget is not None:
        runs = min(runs, runs_that_fit(args.budget))
        if runs == 0:
            print(f"{args.budget:.0f} s of device time do not hold the staging and one run "
                  f"(~{STAGING_S + RUN_S + COLLECT_S} s): nothing to start this session")
            return 0
    if todo:
        try:
            print("\n".join(batch_lines(todo[:runs], args.session)))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
