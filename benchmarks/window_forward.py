"""The sliding window's forward pass, as validation and ``hco predict`` run it, in several
shapes and layouts, in one process: where the validation of a full-protocol run can get faster.

    python benchmarks/window_forward.py [--device cuda] [--arms ARM,...] [--json out.json]

A full-protocol LA run scores 4 validation and 20 test cases every 200 self-training iterations,
a fifth of its wall time on an H200 (1.84 s per round alone, about 1.3 ms per 112x112x80 window;
results/speed/README.md, sixth round). The window's work is the V-Net's forward in eval mode
and the softmax (:func:`hco_cli.inference.sliding_window.window_probabilities`, which both
call). An arm is ``MODE-bBATCH-LAYOUT``: MODE ``eager`` or ``ro`` (the forward compiled with
CUDA graphs, as training's validation runs a ``compile: reduce-overhead`` network), BATCH the
windows per forward, LAYOUT ``cl`` (channels-last 3-D, training's CUDA default) or
``contiguous``. Every arm does the same windows (``--windows``, a multiple of every batch) on
random inputs with one randomly initialised LA V-Net (16 filters, batch norm, its eval mode);
bf16 autocast on CUDA, fp32 on the CPU. Rounds are interleaved after a warm-up per arm (the
compile and graph capture of ``ro`` arms happen there); reported per arm: median ms per window
and the ratio to the first arm (> 1: faster than it). Each arm's probabilities are compared
with the first arm's on the same windows (max |difference|: layouts and batch sizes may pick
other kernels, so bf16 rounding may differ).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hco_cli.config import ModelConfig
from hco_cli.inference.sliding_window import window_probabilities
from hco_cli.io_utils import write_json
from hco_cli.models.vnet import build_model, compile_forward
from hco_cli.training.setup import set_deterministic

DEFAULT_ARMS = ("ro-b16-cl", "ro-b32-cl", "ro-b8-cl", "eager-b16-cl", "eager-b32-cl",
                "eager-b16-contiguous")


@dataclass(frozen=True)
class Arm:
    name: str
    compiled: bool
    batch: int
    channels_last: bool


def parse_arm(name: str) -> Arm:
    """``MODE-bBATCH-LAYOUT`` (module docstring)."""
    parts = name.split("-")
    if (len(parts) != 3 or parts[0] not in ("eager", "ro") or not parts[1].startswith("b")
            or not parts[1][1:].isdigit() or int(parts[1][1:]) < 1
            or parts[2] not in ("cl", "contiguous")):
        raise ValueError(f"arm {name!r}: expected MODE-bBATCH-LAYOUT, MODE eager or ro, "
                         "LAYOUT cl or contiguous (e.g. ro-b16-cl)")
    return Arm(name, parts[0] == "ro", int(parts[1][1:]), parts[2] == "cl")


def network(arm: Arm, filters: int, device: torch.device, seed: int) -> nn.Module:
    """The same random V-Net for every arm (one seed), in the arm's layout and mode."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(n_filters=filters), in_channels=1, num_classes=2)
    model = model.to(device).eval()
    if arm.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    if arm.compiled:
        compile_forward(model, "reduce-overhead")
    return model


def windows_for(arm: Arm, windows: Tensor) -> list[Tensor]:
    """``windows`` in the arm's batches and layout."""
    fmt = torch.channels_last_3d if arm.channels_last else torch.contiguous_format
    return [w.contiguous(memory_format=fmt) for w in windows.split(arm.batch)]


@torch.inference_mode()
def probabilities(model: nn.Module, batches: list[Tensor], amp: bool) -> Tensor:
    return torch.cat([window_probabilities([model], b, amp=amp) for b in batches])


def timed(model: nn.Module, batches: list[Tensor], amp: bool, device: torch.device) -> float:
    """Seconds for the batches, to a device synchronisation."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            window_probabilities([model], b, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(arms: list[Arm], *, device: torch.device, patch: tuple[int, int, int], filters: int,
        count: int, rounds: int, warmup: int, seed: int = 0) -> dict:
    amp = device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(seed)
    windows = torch.randn(count, 1, *patch, generator=gen, device=device)
    models = {a.name: network(a, filters, device, seed) for a in arms}
    batches = {a.name: windows_for(a, windows) for a in arms}
    first = arms[0].name
    reference = probabilities(models[first], batches[first], amp)
    difference = {}
    for arm in arms:
        for _ in range(warmup):  # compiling and capturing the graphs of an ro arm
            timed(models[arm.name], batches[arm.name], amp, device)
        probs = probabilities(models[arm.name], batches[arm.name], amp)
        difference[arm.name] = float((probs - reference).abs().max())
    seconds: dict[str, list[float]] = {a.name: [] for a in arms}
    for _ in range(rounds):  # interleaved: a drift of the card's clock hits every arm
        for arm in arms:
            seconds[arm.name].append(timed(models[arm.name], batches[arm.name], amp, device))
    per_window = {k: 1000 * statistics.median(v) / count for k, v in seconds.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "patch": list(patch), "filters": filters,
        "windows": count, "rounds": rounds, "warmup": warmup, "bf16": amp,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "ms_per_window": per_window,
        "ratio_to_first": {k: per_window[first] / v for k, v in per_window.items()},
        "max_abs_difference_to_first": difference,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help="comma-separated MODE-bBATCH-LAYOUT arms, the first the baseline")
    parser.add_argument("--patch", default="112,112,80")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--windows", type=int, default=192,
                        help="windows per timed round, a multiple of every arm's batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per arm")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels, no autotuning (as the full-protocol study)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        arms = [parse_arm(a) for a in args.arms.split(",") if a]
        patch = tuple(int(v) for v in args.patch.split(","))
    except ValueError as exc:
        parser.error(str(exc))
    if not arms or len(patch) != 3:
        parser.error("need at least one arm and a patch of three sizes")
    if uneven := [a.name for a in arms if args.windows % a.batch]:
        parser.error(f"--windows {args.windows} is not a multiple of the batch of {uneven}")
    device = torch.device(args.device)
    if device.type == "cuda" or args.deterministic:  # (the setting imports inductor: 2-6 s)
        set_deterministic(args.deterministic)  # off: cuDNN autotuning, as predict runs
    result = run(arms, device=device, patch=(patch[0], patch[1], patch[2]),
                 filters=args.filters, count=args.windows, rounds=args.rounds,
                 warmup=args.warmup)
    for name, ms in result["ms_per_window"].items():
        print(f"{name:24s} {ms:8.3f} ms per window  {result['ratio_to_first'][name]:5.2f}x  "
              f"max |p - first| {result['max_abs_difference_to_first'][name]:.1e}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
