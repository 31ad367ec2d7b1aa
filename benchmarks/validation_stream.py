"""Validation's sliding window case by case against one stream of windows over all cases.

    python benchmarks/validation_stream.py [--device cuda] [--mode ro] [--json out.json]

A full-protocol LA run scores its 20 test cases every 200 self-training iterations (1.50 s per
round on an H200, a sixth of the run; results/speed/README.md, seventh round). Under CUDA
graphs every forward takes the same batch, so each case's last, shorter batch was filled with
zero windows: 1248 windows computed for 1128 at batch 16 (9.6 %). The stream
(:func:`hco_cli.inference.sliding_window.predict_volumes`, what validation runs now) fills a
case's last batch with the next case's windows and pads only the split's last batch.

Both paths score the same random volumes (by default the shapes of the 20 LA test cases, a
fact of the dataset) with one randomly initialised LA V-Net (``window_forward.py``'s: 16
filters, eval mode, channels-last, bf16 autocast on CUDA, fp32 on the CPU): ``case`` calls
:func:`~hco_cli.inference.sliding_window.predict_volume` per volume with ``full_batches`` (the
path before), ``stream`` the stream. Rounds are interleaved after a warm-up (the compile and
graph capture of ``--mode ro`` happen there). Reported: the windows each path computes, the
median seconds per pass over the split and the ratio (> 1: the stream is faster), and per case
the largest |difference| between the two maps and whether their argmax agrees. The study may
take the stream mid-way only where the difference is 0.0 for every case: a window's output
must not depend on the other windows of its batch (on the CPU it can, by an ulp).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from hco_cli.inference.sliding_window import predict_volume, predict_volumes, window_boxes
from hco_cli.io_utils import write_json
from hco_cli.training.setup import set_deterministic

LA_TEST_SHAPES = (
    (175, 132, 88), (196, 148, 88), (215, 140, 88), (209, 140, 88), (170, 136, 88),
    (210, 154, 88), (168, 136, 88), (215, 147, 88), (191, 154, 88), (186, 143, 88),
    (183, 133, 88), (190, 135, 88), (190, 138, 88), (187, 139, 88), (177, 139, 88),
    (182, 136, 88), (178, 146, 88), (192, 141, 88), (231, 143, 88), (232, 144, 88),
)


def windows_of(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return len(window_boxes(shape, patch, stride))


def computed(shapes: list[tuple[int, ...]], patch: tuple[int, ...], stride: tuple[int, ...],
             batch: int) -> dict[str, int]:
    """Windows each path runs through the network, zero filler included."""
    per_case = [windows_of(s, patch, stride) for s in shapes]
    return {"needed": sum(per_case),
            "case": sum(math.ceil(n / batch) * batch for n in per_case),
            "stream": math.ceil(sum(per_case) / batch) * batch}


def by_case(model: nn.Module, images: list[Tensor], kw: dict) -> list[Tensor]:
    return [predict_volume(model, image, full_batches=True, **kw) for image in images]


def by_stream(model: nn.Module, images: list[Tensor], kw: dict) -> list[Tensor]:
    return list(predict_volumes(model, images, full_batches=True, **kw))


def timed(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(*, device: torch.device, mode: str, shapes: list[tuple[int, ...]],
        patch: tuple[int, ...], stride: tuple[int, ...], batch: int, filters: int,
        rounds: int, warmup: int, seed: int = 0) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from window_forward import network, parse_arm  # the same random LA V-Net, one definition

    gen = torch.Generator(device=device).manual_seed(seed)
    images = [torch.randn(1, *s, generator=gen, device=device) for s in shapes]
    model = network(parse_arm(f"{mode}-b{batch}-cl"), filters, device, seed)
    kw = {"patch_size": patch, "stride": stride, "num_classes": 2, "batch_size": batch,
          "amp": device.type == "cuda"}
    paths = {"case": lambda: by_case(model, images, kw),
             "stream": lambda: by_stream(model, images, kw)}
    for _ in range(warmup):
        for fn in paths.values():
            timed(fn, device)
    case_maps, stream_maps = by_case(model, images, kw), by_stream(model, images, kw)
    difference = [float((a - b).abs().max()) for a, b in zip(case_maps, stream_maps,
                                                              strict=True)]
    argmax_equal = [bool(torch.equal(a.argmax(0), b.argmax(0)))
                    for a, b in zip(case_maps, stream_maps, strict=True)]
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):  # interleaved: a drift of the card's clock hits both paths
        for name, fn in paths.items():
            seconds[name].append(timed(fn, device))
    median = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "mode": mode, "patch": list(patch), "stride": list(stride),
        "batch": batch, "filters": filters, "cases": len(shapes), "rounds": rounds,
        "warmup": warmup, "bf16": device.type == "cuda",
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "windows": computed(shapes, patch, stride, batch),
        "seconds": median, "ratio_stream": median["case"] / median["stream"],
        "max_abs_difference": difference, "argmax_equal": argmax_equal,
        "identical": all(d == 0.0 for d in difference),
    }


def triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{text!r}: expected three positive sizes, e.g. 112,112,80")
    return values[0], values[1], values[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=("ro", "eager"), default="ro",
                        help="ro: the forward under CUDA graphs, as a compile: reduce-overhead "
                             "run validates")
    parser.add_argument("--shapes", default=None,
                        help="volume shapes X,Y,Z separated by ';' (default: the 20 LA test cases)")
    parser.add_argument("--patch", default="112,112,80")
    parser.add_argument("--stride", default="18,18,4")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per path")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels, no autotuning (as the full-protocol study)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        shapes = ([triple(s) for s in args.shapes.split(";") if s] if args.shapes
                  else [tuple(s) for s in LA_TEST_SHAPES])
        patch, stride = triple(args.patch), triple(args.stride)
    except ValueError as exc:
        parser.error(str(exc))
    if not shapes or args.batch < 1:
        parser.error("need at least one shape and a positive --batch")
    device = torch.device(args.device)
    if device.type == "cuda" or args.deterministic:  # (the setting imports inductor: 2-6 s)
        set_deterministic(args.deterministic)
    result = run(device=device, mode=args.mode, shapes=shapes, patch=patch, stride=stride,
                 batch=args.batch, filters=args.filters, rounds=args.rounds,
                 warmup=args.warmup)
    w, s = result["windows"], result["seconds"]
    print(f"windows: {w['needed']} needed, {w['case']} case by case, {w['stream']} streamed")
    print(f"case by case {s['case']:.3f} s, streamed {s['stream']:.3f} s: "
          f"{result['ratio_stream']:.3f}x; max |difference| "
          f"{max(result['max_abs_difference']):.1e}, argmax equal in "
          f"{sum(result['argmax_equal'])}/{result['cases']} cases")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
