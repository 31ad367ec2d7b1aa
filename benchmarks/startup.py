"""Process start-up: ``hco --help`` and ``hco evaluate --help`` against ``python -c pass`` and
``python -c "import torch"``, each a fresh process, timed in the same run.

    .venv/bin/python benchmarks/startup.py [--repeats 7] [--baseline OTHER_CHECKOUT]

Prints the median wall time of each command and its ratio to ``python -c pass`` and to
``import torch``: the CLI should start in a fraction of what importing torch alone costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "hco --help": ["-m", "hco_cli", "--help"],
    "hco evaluate --help": ["-m", "hco_cli", "evaluate", "--help"],
    "hco compare --help": ["-m", "hco_cli", "compare", "--help"],
    "hco train --help": ["-m", "hco_cli", "train", "--help"],
}


def wall(args: list[str], root: Path = ROOT) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, env=env, cwd=root,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout")
    args = parser.parse_args()
    runs = {name: (command, ROOT) for name, command in COMMANDS.items()}
    if args.baseline is not None:
        for name in ("hco --help", "hco evaluate --help"):
            runs[f"{name} (baseline)"] = (COMMANDS[name], args.baseline.resolve())
    for command, root in runs.values():  # warm the file cache once
        wall(command, root)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that load drifts hit every command alike
        for name, (command, root) in runs.items():
            times[name].append(wall(command, root))
    median = {name: statistics.median(values) for name, values in times.items()}
    base, torch_ = median["python -c pass"], median["python -c 'import torch'"]
    print(f"{os.cpu_count()} CPU cores; median of {args.repeats} fresh processes each")
    print(f"{'command':<32}{'median s':>10}{'min s':>8}{'x pass':>9}{'/ torch':>9}")
    for name, value in median.items():
        print(f"{name:<32}{value:10.3f}{min(times[name]):8.3f}{value / base:9.1f}"
              f"{value / torch_:9.2f}")


if __name__ == "__main__":
    main()
