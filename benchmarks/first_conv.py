"""The V-Net's first convolution (1 -> 16 channels, 3x3x3) as it runs, against the same
convolution with the input channel zero-padded to 8, in one process.

    python benchmarks/first_conv.py [--device cpu|cuda] [--rounds N] [--json out.json]

The H200 profile of a self-training iteration (results/speed/train_step-h200-profile-
reordered.txt) spends 1.51 ms in 4 calls of cuDNN's generic ``implicit_convolveNd_sgemm``
kernel, the only convolution there without tensor cores: with one input channel (not a multiple
of 8) in bf16 and channels_last, cuDNN has no implicit-GEMM tensor-core kernel. Zero channels
add nothing to a convolution, so padding the input to 8 channels and the weight to 8 input
channels gives the same output with a tensor-core kernel, for 8x the input bytes of that layer.
This measures whether it pays before the model does it: forward, and forward + weight gradient
(the input needs none), on a BCP batch (8 x 1 x 112 x 112 x 80: the student's mixed batch), bf16
autocast and channels_last on CUDA as training runs, fp32 on the CPU. The padding is timed with
the convolution. Rounds are interleaved; ratio = as it runs / padded (> 1: padding is faster).
The outputs are compared with a float64 convolution of the same values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hco_cli.io_utils import write_json
from hco_cli.training.setup import set_deterministic

Arm = Callable[[Tensor, Tensor], Tensor]


def plain(x: Tensor, w: Tensor) -> Tensor:
    return F.conv3d(x, w, padding=1)


def padded(x: Tensor, w: Tensor, channels: int = 8) -> Tensor:
    """The same convolution with ``channels`` input channels, all but the first zero."""
    extra = channels - x.shape[1]
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))  # (N, C, D, H, W): the last pair pads C
    wp = F.pad(w, (0, 0, 0, 0, 0, 0, 0, extra))  # (O, C, kD, kH, kW)
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        xp = xp.contiguous(memory_format=torch.channels_last_3d)
    return F.conv3d(xp, wp, padding=1)


def _step(arm: Arm, x: Tensor, w: Tensor, backward: bool, amp: bool) -> Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = arm(x, w)
    if backward:
        (grad,) = torch.autograd.grad(out.float().sum(), w)
        return grad
    return out


def timed(arm: Arm, x: Tensor, w: Tensor, *, backward: bool, amp: bool, repeat: int) -> float:
    """Milliseconds per call, the mean over ``repeat`` calls after a synchronisation."""
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    for _ in range(repeat):
        _step(arm, x, w, backward, amp)
    if cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / repeat * 1e3


def inputs(device: torch.device, shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device)
    w = (torch.randn((16, 1, 3, 3, 3), generator=gen) * 0.2).to(device).requires_grad_(True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, w


def agreement(x: Tensor, w: Tensor, amp: bool) -> dict[str, float]:
    """Max |output - float64 reference| of each arm and between the arms, and the same for the
    weight gradient of the output's sum."""
    ref_w = w.detach().double().cpu().requires_grad_(True)
    ref = F.conv3d(x.double().cpu(), ref_w, padding=1)
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_w)
    out, grad = {}, {}
    for name, arm in (("plain", plain), ("padded", padded)):
        with torch.no_grad():
            out[name] = _step(arm, x, w.detach(), False, amp).double().cpu()
        grad[name] = _step(arm, x, w, True, amp).double().cpu()
    result = {}
    for what, values, reference in (("", out, ref.detach()), ("wgrad_", grad, ref_grad)):
        for name in ("plain", "padded"):
            result[f"{what}{name}_vs_float64"] = float((values[name] - reference).abs().max())
        result[f"{what}padded_vs_plain"] = float((values["padded"] - values["plain"]).abs().max())
    return result


def run(device: torch.device, shape: tuple[int, ...], rounds: int, repeat: int,
        warmup: int) -> dict:
    amp = device.type == "cuda"
    x, w = inputs(device, shape, seed=0)
    arms: dict[str, Arm] = {"plain": plain, "padded": padded}
    times: dict[str, list[float]] = {f"{a}-{k}": [] for a in arms for k in ("fwd", "fwd+wgrad")}
    for backward in (False, True):
        for arm in arms.values():
            timed(arm, x, w, backward=backward, amp=amp, repeat=warmup)
    for _ in range(rounds):  # interleaved: a drift of the card's clock hits both arms
        for name, arm in arms.items():
            for backward, kind in ((False, "fwd"), (True, "fwd+wgrad")):
                times[f"{name}-{kind}"].append(
                    timed(arm, x, w, backward=backward, amp=amp, repeat=repeat))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "shape": list(shape), "bf16_channels_last": amp,
        "rounds": rounds, "repeat": repeat, "median_ms": median,
        "ratio_plain_over_padded": {
            kind: median[f"plain-{kind}"] / median[f"padded-{kind}"]
            for kind in ("fwd", "fwd+wgrad")},
        "max_abs_difference": agreement(x, w, amp),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs=5, default=[8, 1, 112, 112, 80],
                        metavar=("N", "C", "D", "H", "W"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20, help="calls per timed round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.shape[1] != 1:
        parser.error("--shape: the first convolution takes one input channel (C = 1)")
    if args.device == "cuda":
        set_deterministic(False)  # cuDNN autotuning, as training runs by default
    result = run(torch.device(args.device), tuple(args.shape), args.rounds, args.repeat,
                 args.warmup)
    for key, value in result["median_ms"].items():
        print(f"{key:18s} {value:8.3f} ms")
    for kind, ratio in result["ratio_plain_over_padded"].items():
        print(f"ratio {kind:12s} {ratio:6.2f}x (as it runs / padded)")
    print("max |difference|:", ", ".join(f"{k} {v:.2e}"
                                         for k, v in result["max_abs_difference"].items()))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
