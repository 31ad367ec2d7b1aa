"""Per-phase wall time per iteration of finished runs, and the full BCP protocol extrapolated.

    python scripts/phase_rates.py RUN [RUN ...] [--pretrain N] [--selftrain N] [--test-seconds S]

Reads each run's metrics.jsonl: the time of a phase's first and last training records (validation
every 200 iterations included, as in the protocol) gives seconds per iteration over the measured
iterations. The extrapolation is pretrain x rate + selftrain x rate (+ the measured test
evaluation). A run started with --init-from has no pre-training rows: its pre-training rate is
taken from the first run given that has one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rates(run: Path) -> dict[str, tuple[int, float]]:
    """phase -> (iterations measured, seconds per iteration)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(
        encoding="utf-8").splitlines() if line.strip()]
    out = {}
    for phase in ("pretrain", "selftrain"):
        recs = [r for r in rows if r.get("phase") == phase]
        if len(recs) >= 2:
            span = recs[-1]["iter"] - recs[0]["iter"]
            out[phase] = (span, (recs[-1]["time"] - recs[0]["time"]) / span)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--pretrain", type=int, default=2000)
    parser.add_argument("--selftrain", type=int, default=15000)
    parser.add_argument("--test-seconds", type=float, default=0.0)
    args = parser.parse_args()
    measured = {run: rates(run) for run in args.runs}
    pre = next((r["pretrain"] for r in measured.values() if "pretrain" in r), None)
    print(f"{'run':<28}{'pre its':>8}{'pre ms/it':>10}{'self its':>9}{'self ms/it':>11}"
          f"{'protocol min':>13}")
    for run, r in measured.items():
        p = r.get("pretrain", pre)
        s = r.get("selftrain")
        total = None
        if p is not None and s is not None:
            total = (args.pretrain * p[1] + args.selftrain * s[1] + args.test_seconds) / 60
        cells = [f"{run.name:<28}",
                 f"{p[0] if p else '-':>8}", f"{1000 * p[1] if p else float('nan'):>10.1f}",
                 f"{s[0] if s else '-':>9}", f"{1000 * s[1] if s else float('nan'):>11.1f}",
                 f"{total if total is not None else float('nan'):>13.1f}"]
        print("".join(cells))


if __name__ == "__main__":
    main()
