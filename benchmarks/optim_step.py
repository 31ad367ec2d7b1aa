"""Time of one optimizer step for the nine ``hco`` optimizers on V-Net-sized parameters.

    python benchmarks/optim_step.py [--device cpu|cuda] [--repeat N] [--threads T] [--json out.json]

Parameters have the shapes of the BCP LA V-Net (n_filters=16, BatchNorm, about 9.45 M values):
those of ``hco_cli.models.vnet.VNet`` when it is importable, else the list computed below from
PROTOCOLS 1.2. Gradients g_L and g_U are fixed random tensors. Each of our optimizers steps with
``step_two_source(g_L, g_U)`` in three modes: "(foreach)" (flat=False: foreach kernels over the
parameter list), "(flat)" (flat=True, fused=False: one torch kernel per operation over flat
buffers) and, on CUDA for the three *-hco names, "(fused)" (flat=True, fused=True: two Triton
kernels per step, the CUDA default); flat rows include copying the gradients into the flat
buffers. The baselines, run in the same process, are torch's own SGD/Adam/AdamW foreach steps
(and fused on CUDA) with ``p.grad = g_L + g_U`` precomputed, so our plain and CO rows also pay
for the sum g_L + g_U. The table gives ms per step and the ratios to torch's foreach and fused
steps of the same family. Target on an H100: every *-hco step at most 2x torch's fused step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hco_cli.io_utils import write_json
from hco_cli.optim import OPTIMIZER_NAMES, build_optimizer, optimizer_family

TORCH_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
TORCH_KWARGS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
}


def bcp_vnet_shapes(n: int = 16, in_channels: int = 1, classes: int = 2) -> list[tuple[int, ...]]:
    """Parameter shapes of BCP's V-Net: convs (weight, bias) each followed by BatchNorm (w, b)."""
    shapes: list[tuple[int, ...]] = []

    def conv(c_in: int, c_out: int, k: int, *, transposed: bool = False, norm: bool = True) -> None:
        shapes.append((c_in, c_out, k, k, k) if transposed else (c_out, c_in, k, k, k))
        shapes.append((c_out,))
        if norm:
            shapes.extend([(c_out,), (c_out,)])

    c = in_channels
    for i, stages in enumerate((1, 2, 3, 3, 3)):  # encoder, 2x2x2 stride-2 conv between stages
        width = n * 2**i
        for s in range(stages):
            conv(c if s == 0 else width, width, 3)
        c = width
        if i < 4:
            conv(width, 2 * width, 2)
            c = 2 * width
    for i, stages in enumerate((3, 3, 2, 1)):  # decoder: transposed conv up, then convs
        width = n * 2 ** (3 - i)
        conv(2 * width, width, 2, transposed=True)
        for _ in range(stages):
            conv(width, width, 3)
    conv(n, classes, 1, norm=False)
    return shapes


def parameter_shapes() -> tuple[list[tuple[int, ...]], str]:
    """The real V-Net's shapes when the model module exists, else the computed BCP list."""
    try:
        from hco_cli.models.vnet import VNet
    except ImportError:
        return bcp_vnet_shapes(), "BCP V-Net shapes (computed, PROTOCOLS 1.2)"
    net = VNet(in_channels=1, num_classes=2)
    return [tuple(p.shape) for p in net.parameters()], "hco_cli.models.vnet.VNet"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, *,
                     warmup: int, repeat: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the mean ms per step; each round times every optimizer in turn,
    so that a change in machine load affects baselines and ours alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeat):
                step()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3 / repeat)
    return {name: statistics.median(ms) for name, ms in times.items()}


def run(device: torch.device, *, repeat: int, warmup: int, rounds: int) -> dict[str, Any]:
    shapes, source = parameter_shapes()
    gen = torch.Generator().manual_seed(0)
    # One parameter set shared by all optimizers (each keeps its own state): values drift
    # between optimizers, which does not matter for timing and keeps memory small.
    params = [(torch.randn(s, generator=gen) * 0.05).to(device).requires_grad_() for s in shapes]
    grads_l = [torch.randn(s, generator=gen).to(device) for s in shapes]
    grads_u = [torch.randn(s, generator=gen).to(device) for s in shapes]
    for p, a, b in zip(params, grads_l, grads_u, strict=True):
        p.grad = a + b  # what torch's optimizers read
    steps: dict[str, Callable[[], None]] = {}
    family: dict[str, str] = {}
    modes = ["foreach", "fused"] if device.type == "cuda" else ["foreach"]
    for fam, cls in TORCH_OPTIMIZERS.items():
        for mode in modes:
            key = f"torch {fam} ({mode})"
            steps[key] = cls(params, **TORCH_KWARGS[fam], **{mode: True}).step
            family[key] = fam
    for name in OPTIMIZER_NAMES:
        opt = build_optimizer(name, params, foreach=True, flat=False)
        steps[f"{name} (foreach)"] = partial(opt.step_two_source, grads_l, grads_u)
        family[f"{name} (foreach)"] = optimizer_family(name)
    flat_modes = {"flat": False, "fused": True} if device.type == "cuda" else {"flat": False}
    for mode, fused in flat_modes.items():
        for name in OPTIMIZER_NAMES:
            if fused and not name.endswith("-hco"):
                continue
            # Flat mode re-homes its parameters in its own buffer: give each its own copy.
            own = [p.detach().clone().requires_grad_() for p in params]
            opt = build_optimizer(name, own, flat=True, fused=fused)
            steps[f"{name} ({mode})"] = partial(opt.step_two_source, grads_l, grads_u)
            family[f"{name} ({mode})"] = optimizer_family(name)
    ms = time_interleaved(steps, device, warmup=warmup, repeat=repeat, rounds=rounds)
    fused = "fused" if device.type == "cuda" else "foreach"
    rows = [{"optimizer": key, "family": family[key], "ms": value,
             "ratio_to_torch_foreach": value / ms[f"torch {family[key]} (foreach)"],
             f"ratio_to_torch_{fused}": value / ms[f"torch {family[key]} ({fused})"]}
            for key, value in ms.items()]
    return {"device": _device_name(device), "torch": torch.__version__, "shapes": source,
            "tensors": len(shapes), "parameters": sum(p.numel() for p in params),
            "repeat": repeat, "rounds": rounds, "rows": rows}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeat", type=int, default=5, help="steps per optimizer and round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    result = run(torch.device(args.device), repeat=args.repeat, warmup=args.warmup,
                 rounds=args.rounds)
    print(f"{result['device']}, torch {result['torch']}: {result['parameters']:,} parameters in "
          f"{result['tensors']} tensors ({result['shapes']})")
    fused = "fused" if args.device == "cuda" else "foreach"
    print(f"{'optimizer':<24}{'ms/step':>10}{'x torch foreach':>17}{f'x torch {fused}':>17}")
    for row in result["rows"]:
        print(f"{row['optimizer']:<24}{row['ms']:>10.3f}{row['ratio_to_torch_foreach']:>17.2f}"
              f"{row[f'ratio_to_torch_{fused}']:>17.2f}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
