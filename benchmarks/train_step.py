"""Per-iteration time of BCP pre- and self-training, per optimizer, with a stage breakdown.

    python benchmarks/train_step.py --data data/la [--device cuda] [--iterations 60]
    python benchmarks/train_step.py            # random volumes of LA size when no data is given

For each optimizer (default: sgd, sgd-hco, adamw-hco) the same seeded framework runs
``--iterations`` pre-training and self-training steps. "total" is the wall time per iteration of
an uninstrumented run (one synchronisation at the end). The breakdown comes from a second,
instrumented run that synchronises around each stage, so its stages add up to a little more
than the total: data (sampler), pseudo-labels (teacher forward + largest component), student
forward + loss, backward (the gradient pass(es) of two_source_step), optimizer step, EMA.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import hco_cli.ssl.bcp as bcp_module
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.sampling import PatchSampler
from hco_cli.models import ModelConfig, build_model
from hco_cli.optim import build_optimizer, plain_variant
from hco_cli.ssl.base import Batch
from hco_cli.ssl.config import BCPConfig
from hco_cli.ssl.registry import build_framework

PATCH = (112, 112, 80)
STAGES = ("data", "pseudo-labels", "forward+loss", "backward", "optimizer step", "ema")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates synchronised wall time per stage (only when enabled)."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device, self.enabled = device, enabled
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.seconds[stage] += time.perf_counter() - start
            return out
        return timed


def batches(args: argparse.Namespace, device: torch.device) -> Callable[[bool], Batch]:
    """A batch source: the real patch sampler on --data, or random LA-sized volumes."""
    if args.data:
        dataset = PreparedDataset(Path(args.data))
        sampler = PatchSampler(dataset, labeled=dataset.split("labeled"),
                               unlabeled=dataset.split("unlabeled"), patch_size=PATCH,
                               labeled_batch_size=4, unlabeled_batch_size=4, augment="bcp",
                               seed=0, device=str(device))
        return lambda unl: sampler.next_batch(with_unlabeled=unl)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def random_batch(unl: bool) -> Batch:
        image = torch.randn(4, 1, *PATCH, generator=gen).to(device)
        label = (image[:, 0] > 0.5).long()
        unlabeled = torch.randn(4, 1, *PATCH, generator=gen).to(device) if unl else None
        return Batch(labeled_image=image, labeled_label=label, unlabeled_image=unlabeled)
    return random_batch


def run(name: str, phase_name: str, args: argparse.Namespace, device: torch.device,
        *, instrument: bool) -> tuple[float, dict[str, float]]:
    torch.manual_seed(0)
    cfg = BCPConfig()
    model_cfg = ModelConfig()

    def factory() -> torch.nn.Module:
        model = build_model(model_cfg, in_channels=1, num_classes=2).to(device)
        return model.to(memory_format=torch.channels_last_3d) if device.type == "cuda" else model
    framework = build_framework(cfg, model_factory=factory, num_classes=2, device=device, seed=0)
    phase = next(p for p in framework.phases() if p.name == phase_name)
    framework.start_phase(phase)
    opt_name = plain_variant(name) if phase.plain_optimizer else name
    watch = Stopwatch(device, instrument)
    opt = build_optimizer(opt_name, framework.trainable()["student"].parameters())
    opt.step_two_source = watch.wrap("optimizer step", opt.step_two_source)  # type: ignore[method-assign]
    original = (bcp_module.two_source_step, bcp_module.ema_update_, framework.pseudo_label)
    bcp_module.two_source_step = watch.wrap("backward", original[0])  # type: ignore[assignment]
    bcp_module.ema_update_ = watch.wrap("ema", original[1])  # type: ignore[assignment]
    framework.pseudo_label = watch.wrap("pseudo-labels", original[2])  # type: ignore[method-assign]
    framework.selftrain_losses = watch.wrap(  # type: ignore[method-assign]
        "forward+loss", framework.selftrain_losses)
    framework.pretrain_loss = watch.wrap(  # type: ignore[method-assign]
        "forward+loss", framework.pretrain_loss)
    next_batch = watch.wrap("data", batches(args, device))
    amp = device.type == "cuda"
    try:
        for i in range(args.warmup + args.iterations):
            if i == args.warmup:
                sync(device)
                watch.seconds.clear()
                start = time.perf_counter()
            batch = next_batch(phase.needs_unlabeled)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                framework.train_step(phase, batch, {"student": opt}, i)
        sync(device)
        total = (time.perf_counter() - start) / args.iterations
    finally:
        bcp_module.two_source_step, bcp_module.ema_update_ = original[0], original[1]
    stages = {k: v / args.iterations for k, v in watch.seconds.items()}
    # Nested stages: backward wraps the optimizer step, forward+loss wraps the pseudo-labels.
    stages["backward"] = stages.get("backward", 0.0) - stages.get("optimizer step", 0.0)
    stages["forward+loss"] = stages.get("forward+loss", 0.0) - stages.get("pseudo-labels", 0.0)
    return total, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="prepared LA dataset (default: random volumes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--optimizers", default="sgd,sgd-hco,adamw-hco")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, BCP V-Net, patch {PATCH}, batch 4+4, "
          f"{'bf16 + channels_last' if device.type == 'cuda' else 'fp32'}")
    header = f"{'phase':<10}{'optimizer':<11}{'total ms':>9}" + "".join(f"{s:>15}" for s in STAGES)
    print(header)
    base: dict[str, float] = {}
    for phase_name in ("pretrain", "selftrain"):
        for opt_name in args.optimizers.split(","):
            total, _ = run(opt_name, phase_name, args, device, instrument=False)
            _, stages = run(opt_name, phase_name, args, device, instrument=True)
            base.setdefault(phase_name, total)
            row = f"{phase_name:<10}{opt_name:<11}{1000 * total:>9.1f}"
            row += "".join(f"{1000 * stages.get(s, 0.0):>15.1f}" for s in STAGES)
            print(row + f"   x{total / base[phase_name]:.3f} vs {args.optimizers.split(',')[0]}")


if __name__ == "__main__":
    main()
