"""The pseudo-labels' whole largest-component step on a GPU: CuPy's labelling (one host
synchronisation, for its component count) against the Triton union-find (none), in one process.

    python benchmarks/lcc_step.py [--rounds N] [--repeat N] [--json out.json]

A BCP self-training batch of teacher labels: 4 volumes of 112x112x80 with a blobby foreground
(smoothed noise, thresholded; several components per volume), as ``benchmarks/components.py``
builds it. Both arms return the same masks as scipy (checked first). Per arm, medians over
interleaved rounds:

- ``device ms``: calls back to back, one synchronisation at the end of the round: the step's
  cost on the device (plus CuPy's waits);
- ``host ms``: the host's time inside one call after a 20 ms matmul has been queued ahead of it
  (what a training step has queued when the step comes): CuPy waits for the queue to drain
  before it returns, the Triton step returns once its launches are queued. That wait is what
  the host cannot spend queuing the student's forwards.

Ratios: cupy / triton for each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from hco_cli.io_utils import write_json
from hco_cli.ops import ccl_triton
from hco_cli.ops.components import lcc_cupy, lcc_numpy


def teacher_labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((4, 112, 112, 80)), (0, 3, 3, 3)) > 0.512


def queue_ahead(device: torch.device, ms: float = 20.0) -> Callable[[], None]:
    """A function that queues about ``ms`` of matmuls on the device (calibrated once)."""
    a = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize(device)
    per = (time.perf_counter() - start) / 10 * 1e3
    count = max(1, round(ms / per))

    def queue() -> None:
        for _ in range(count):
            a @ a
    return queue


def device_ms(fn: Callable[[Tensor], Tensor], mask: Tensor, repeat: int) -> float:
    torch.cuda.synchronize(mask.device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(mask)
    torch.cuda.synchronize(mask.device)
    return (time.perf_counter() - start) / repeat * 1e3


def host_ms(fn: Callable[[Tensor], Tensor], mask: Tensor, repeat: int,
            queue: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize(mask.device)
        queue()
        start = time.perf_counter()
        fn(mask)
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize(mask.device)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20, help="calls per timed round")
    parser.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("lcc_step.py compares two GPU paths: it needs a CUDA device")
    device = torch.device("cuda")
    labels = teacher_labels(0)
    mask = torch.from_numpy(labels).to(device)
    arms: dict[str, Callable[[Tensor], Tensor]] = {
        "cupy": lambda m: lcc_cupy(m, args.connectivity),
        "triton": lambda m: ccl_triton.largest_component(m, args.connectivity)}
    expected = lcc_numpy(labels, args.connectivity)
    for name, fn in arms.items():  # warm-up (Triton compiles here) and the check
        if not np.array_equal(fn(mask).cpu().numpy(), expected):
            raise SystemExit(f"{name}: the largest components differ from scipy's")
    queue = queue_ahead(device)
    times: dict[str, dict[str, list[float]]] = {
        what: {name: [] for name in arms} for what in ("device", "host")}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            times["device"][name].append(device_ms(fn, mask, args.repeat))
            times["host"][name].append(host_ms(fn, mask, args.repeat, queue))
    median = {what: {name: statistics.median(t) for name, t in per.items()}
              for what, per in times.items()}
    ratio = {what: m["cupy"] / m["triton"] for what, m in median.items()}
    card = torch.cuda.get_device_name(device)
    rank = {6: 1, 18: 2, 26: 3}[args.connectivity]
    count = int(ndimage.label(labels, structure=np.pad(
        ndimage.generate_binary_structure(3, rank)[None], ((1, 1), (0, 0), (0, 0), (0, 0))))[1])
    print(f"{card}, torch {torch.__version__}: 4 x 112x112x80, {count} components, "
          f"foreground {100 * labels.mean():.1f} %, connectivity {args.connectivity}")
    print(f"  {'arm':8s} {'device ms':>10s} {'host ms':>10s}")
    for name in arms:
        print(f"  {name:8s} {median['device'][name]:10.3f} {median['host'][name]:10.3f}")
    print(f"  ratio cupy / triton: device {ratio['device']:.2f}x, host {ratio['host']:.2f}x")
    if args.json:
        write_json(args.json, {"device": card, "torch": torch.__version__,
                               "connectivity": args.connectivity, "components": count,
                               "foreground": float(labels.mean()), "ms": times,
                               "median_ms": median, "ratio": ratio})


if __name__ == "__main__":
    main()
