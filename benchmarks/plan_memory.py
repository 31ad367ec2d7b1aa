"""The planner's memory estimate against measured memory, for several plans.

    python benchmarks/plan_memory.py [--device cuda] [--data DIR ...] [--json out.json]
    python benchmarks/plan_memory.py --device cpu --filters 4     # the CPU proxy, quick

CUDA: each plan builds its framework (BCP: self-training, the EMA teacher labels the
unlabeled halves; CMT: both steps), takes one warm-up iteration (optimizer state is created
lazily) and then one measured iteration with ``sgd-hco`` (two gradient sources), bf16
autocast and channels-last, as ``hco train`` runs; "measured" is
``torch.cuda.max_memory_allocated`` over that iteration (the resident weights, gradients and
optimizer state included), "estimate" is :func:`hco_cli.planning.memory.estimate_memory`.

CPU (no ``max_memory_allocated``): the estimate plus a proxy that is measurable here: the
bytes autograd saves for one sample's forward pass (``saved_tensors_hooks``, fp32), times the
framework's sample graphs, against the estimate's saved-activation term in fp32.

Plans: LA (BCP 112 x 112 x 80, 4 + 4, and one step larger), fetal (CMT 64 x 64 x 48, 2 + 2
and 48 x 64 x 48, 4 + 4), Pancreas (BCP 96^3) and a thick-slice plan (0.8 x 0.8 x 6 mm: BCP
192 x 192 x 12 with z pooled twice); ``--data`` adds the plan of each prepared dataset given.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hco_cli.data.batch import Batch
from hco_cli.data.dataset import PreparedDataset
from hco_cli.io_utils import write_json
from hco_cli.models import ModelConfig
from hco_cli.models.vnet import build_model
from hco_cli.optim import build_optimizer
from hco_cli.planning.measure import measure_saved_bytes
from hco_cli.planning.memory import (
    GIB,
    NetworkShape,
    estimate_memory,
    graphs,
    saved_elements,
)
from hco_cli.planning.planner import PlanOptions, plan_dataset
from hco_cli.planning.rules import layout, umix_blocks
from hco_cli.ssl.config import BCPConfig, CMTConfig
from hco_cli.ssl.registry import build_framework

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Plan:
    name: str
    framework: str
    patch: Triple
    labeled: int
    unlabeled: int
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    classes: int = 2

    def layout(self) -> tuple[list[Triple], list[Triple]]:
        return layout(self.spacing, self.patch)


PLANS = [
    Plan("la bcp", "bcp", (112, 112, 80), 4, 4),
    Plan("la bcp +1 step", "bcp", (128, 112, 80), 4, 4),
    Plan("pancreas bcp", "bcp", (96, 96, 96), 4, 4),
    Plan("fetal cmt short", "cmt", (64, 64, 48), 2, 2, classes=9),
    Plan("fetal cmt 4+4", "cmt", (48, 64, 48), 4, 4, classes=9),
    Plan("thick-slice bcp", "bcp", (192, 192, 12), 4, 4, (0.8, 0.8, 6.0)),
]


def model_config(plan: Plan, filters: int) -> ModelConfig:
    strides, kernels = plan.layout()
    default = all(s == (2, 2, 2) for s in strides) and all(k == (3, 3, 3) for k in kernels)
    return ModelConfig(n_filters=filters, dropout=plan.framework == "bcp",
                       strides=None if default else strides, kernels=None if default else kernels)


def estimate(plan: Plan, filters: int, *, amp: bool) -> Any:
    strides, kernels = plan.layout()
    net = NetworkShape(patch=plan.patch, strides=strides, n_filters=filters,
                       num_classes=plan.classes, dropout=plan.framework == "bcp")
    return estimate_memory(net, framework=plan.framework, labeled=plan.labeled,
                           unlabeled=plan.unlabeled, kernels=kernels, amp=amp), net


def trial(plan: Plan, filters: int, device: torch.device) -> Callable[[int], None]:
    """One training iteration of ``plan``'s framework on random data, as ``hco train`` runs
    it (sgd-hco; on CUDA bf16 autocast and channels-last)."""
    torch.manual_seed(0)
    cfg = model_config(plan, filters)
    cuda = device.type == "cuda"
    fmt = torch.channels_last_3d if cuda else torch.contiguous_format

    def factory() -> torch.nn.Module:
        model = build_model(cfg, in_channels=1, num_classes=plan.classes).to(device)
        return model.to(memory_format=fmt)  # type: ignore[call-overload]

    fw_cfg = BCPConfig() if plan.framework == "bcp" else CMTConfig(
        blocks_per_axis=umix_blocks(plan.patch))
    framework = build_framework(fw_cfg, model_factory=factory, num_classes=plan.classes,
                                device=device, seed=0)
    phase = framework.phases()[-1]  # BCP: self-training; CMT: its one phase
    framework.start_phase(phase)
    optimizers = {name: build_optimizer("sgd-hco", net.parameters())
                  for name, net in framework.trainable().items()}

    def step(iteration: int) -> None:
        image = torch.randn(plan.labeled, 1, *plan.patch, device=device)
        label = torch.randint(0, plan.classes, (plan.labeled, *plan.patch), device=device)
        unlabeled = torch.randn(plan.unlabeled, 1, *plan.patch, device=device)
        data = Batch(labeled_image=image.contiguous(memory_format=fmt), labeled_label=label,
                     unlabeled_image=unlabeled.contiguous(memory_format=fmt))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            framework.train_step(phase, data, optimizers, iteration)

    return step


def cuda_row(plan: Plan, filters: int, device: torch.device) -> dict[str, Any]:
    """Measured peak of one iteration after a warm-up one (optimizer state is lazy)."""
    step = trial(plan, filters, device)
    step(0)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(1)
    torch.cuda.synchronize(device)
    measured = torch.cuda.max_memory_allocated(device)
    est, _ = estimate(plan, filters, amp=True)
    del step
    torch.cuda.empty_cache()
    return {"plan": plan.name, "patch": "x".join(map(str, plan.patch)),
            "batch": f"{plan.labeled}+{plan.unlabeled}", "estimate_gib": est.total / GIB,
            "measured_gib": measured / GIB, "ratio": est.total / measured}


def cpu_row(plan: Plan, filters: int) -> dict[str, Any]:
    """Saved-tensor bytes of one fp32 sample forward x sample graphs, against the model."""
    torch.manual_seed(0)
    model = build_model(model_config(plan, filters), in_channels=1, num_classes=plan.classes)
    model.train()
    saved = measure_saved_bytes(model, torch.randn(1, 1, *plan.patch))
    est, net = estimate(plan, filters, amp=True)
    samples = graphs(plan.framework, plan.labeled, plan.unlabeled)
    return {"plan": plan.name, "patch": "x".join(map(str, plan.patch)),
            "batch": f"{plan.labeled}+{plan.unlabeled}", "estimate_gib": est.total / GIB,
            "saved_model_gib": samples * saved_elements(net) * 4 / GIB,
            "saved_measured_gib": samples * saved / GIB,
            "ratio": saved_elements(net) * 4 / saved}


def dataset_plans(folders: list[str]) -> list[Plan]:
    plans = []
    for folder in folders:
        network = plan_dataset(Path(folder), PlanOptions()).network
        classes = PreparedDataset(Path(folder)).num_classes  # the output channels it trains
        plans.append(Plan(f"plan of {Path(folder).name}", network.framework, network.patch_size,
                          network.labeled_batch_size, network.unlabeled_batch_size,
                          network.spacing, classes))
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--filters", type=int, default=16, help="V-Net base filters")
    parser.add_argument("--data", nargs="*", default=[], help="prepared datasets to plan")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for plan in [*PLANS, *dataset_plans(args.data)]:
        row = cuda_row(plan, args.filters, device) if device.type == "cuda" else cpu_row(
            plan, args.filters)
        rows.append(row)
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()),
              flush=True)
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k])
                                for k in keys) + " |" for r in rows]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (proxy)"
    print(f"\n{name}, {args.filters} filters, "
          f"{math.prod(PLANS[0].patch)} voxels in the LA patch\n" + "\n".join(lines))
    if args.json:
        write_json(args.json, {"device": name, "filters": args.filters, "rows": rows})


if __name__ == "__main__":
    main()
