"""How long a process that loaded torch takes to end after its last output, by ending.

    python benchmarks/process_exit.py [--runs 5] [--json out.json]

Every ``hco`` command that loads torch (train, predict, sweep, export) ends with the
interpreter's teardown of torch's modules and extensions. Each arm starts fresh processes that
import what ``hco predict`` imports, run one small convolution, write the time to stdout and
end: ``interpreter`` as Python ends a process, ``gc-freeze`` with the collector's objects
frozen first (what ``hco`` does where torch never loaded), ``hco`` through
:func:`hco_cli.cli.app._finish` (threads joined, atexit handlers run, output flushed, then
``os._exit``). Reported per arm: the median seconds from the last output to the process's end
over ``--runs`` processes (arms interleaved), and the ratio of ``interpreter`` to it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hco_cli.io_utils import write_json

BODY = ("import sys, time\n"
        "import torch\n"
        "import hco_cli.cli.app, hco_cli.cli.predict, hco_cli.inference.predict\n"
        "torch.nn.Conv3d(1, 2, 3)(torch.zeros(1, 1, 8, 8, 8))\n"
        "sys.stdout.write(repr(time.time()))\n"
        "sys.stdout.flush()\n")
ENDINGS = {
    "interpreter": "",
    "gc-freeze": "import gc\ngc.freeze()\n",
    "hco": "from hco_cli.cli.app import _finish\n_finish(0)\n",
}


def exit_seconds(ending: str) -> float:
    """Seconds from the body's last output to the end of one fresh process."""
    done = subprocess.run([sys.executable, "-c", BODY + ENDINGS[ending]], capture_output=True,
                          text=True, check=True, timeout=300)
    ended = time.time()
    return ended - float(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per arm")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    seconds: dict[str, list[float]] = {name: [] for name in ENDINGS}
    for _ in range(args.runs):  # interleaved: a busy moment of the host hits every arm
        for name in ENDINGS:
            seconds[name].append(exit_seconds(name))
    median = {name: statistics.median(v) for name, v in seconds.items()}
    result = {"python": platform.python_version(), "machine": platform.machine(),
              "runs": args.runs, "seconds": seconds, "median": median,
              "ratio_to_interpreter": {k: median["interpreter"] / v for k, v in median.items()}}
    for name, value in median.items():
        print(f"{name:12s} {value:7.3f} s from the last output to the end "
              f"({result['ratio_to_interpreter'][name]:.1f}x)")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
