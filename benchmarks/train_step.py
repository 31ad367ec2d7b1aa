"""Per-iteration time of BCP pre- and self-training, per optimizer, with a stage breakdown.

    python benchmarks/train_step.py --data data/la [--device cuda] [--iterations 60]
    python benchmarks/train_step.py            # random volumes of LA size when no data is given

For each optimizer (default: sgd, sgd-hco, adamw-hco in their default CUDA modes, and sgd-hco
with the torch flat step and with the foreach step) the same seeded framework runs pre-training
and self-training steps. "total" is the median wall time per iteration over ``--rounds`` rounds
of ``--iterations`` uninstrumented iterations (one synchronisation per round); the rounds of all
optimizers are interleaved, so the ratio to the first optimizer is a controlled same-process
comparison (the HCO overhead). The
breakdown comes from a separate instrumented run that synchronises around each stage, so its
stages add up to a little more than the total: data (sampler), pseudo-labels (teacher forward +
largest component), student forward + loss, backward (the gradient pass(es) of
two_source_step), optimizer step, EMA.

Candidates of issue 20 are suffixes of an optimizer name, combinable: ``+batched`` runs the
teacher once over both unlabeled halves (``teacher_forward: batched``; with the LA V-Net's
BatchNorm that changes the teacher's statistics, so the row measures the potential only),
``+compile`` the V-Net through ``torch.compile`` (``compile: true``), ``+compile-ro`` with
CUDA graphs (``compile: reduce-overhead``); e.g. ``--optimizers
sgd,sgd+batched,sgd+compile,sgd+compile-ro``: ratios to the first name are same-process
comparisons. Compilation happens in the warm-up iterations (give ``--warmup`` enough).

``--barrier DIR`` is for several of these processes timed together on one GPU
(``benchmarks/concurrency.py``, which also gives ``--no-stages``, leaving the instrumented
run out): after its warm-up each process waits until all have warmed up and starts its timed
rounds at one wall time, then keeps training, untimed, until every process has finished its
timed rounds, so that each of its rounds runs beside all the others. The JSON also records the
wall window of each phase's timed rounds (``windows``: epoch seconds).

A roofline estimate is printed per phase (:mod:`hco_cli.models.roofline`): the network's
FLOPs and unfused bytes per iteration, the time the H200's datasheet peaks (989 TFLOP/s dense
bf16, 4.8 TB/s HBM3e) would allow, and how many times that each row's time is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import hco_cli.ssl.bcp as bcp_module
from hco_cli.data.batch import Batch
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.sampling import PatchSampler
from hco_cli.io_utils import write_json
from hco_cli.models import ModelConfig
from hco_cli.models.roofline import bcp_iteration_cost
from hco_cli.models.vnet import build_model, compile_forward
from hco_cli.optim import build_optimizer, plain_variant
from hco_cli.ssl.config import BCPConfig
from hco_cli.ssl.registry import build_framework

PATCH = (112, 112, 80)
# ":foreach" forces the foreach step, ":flat" the torch flat step (no Triton kernels);
# ":diagN" keeps the default mode and asks for optimizer diagnostics every N iterations, as
# the training loop does with diagnostics_every = N (their overhead is this row vs the plain one).
MODES: dict[str, dict[str, Any]] = {"": {}, "foreach": {"foreach": True, "flat": False},
                                    "flat": {"fused": False}}
STAGES = ("data", "pseudo-labels", "forward+loss", "backward", "optimizer step", "ema")
BARRIER_TIMEOUT = 1800.0  # seconds a process waits for the others before it gives up


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


class Barrier:
    """``--barrier DIR``: timed rounds that start together and run under the full load.

    Per phase, a process writes ``ready-PHASE-PID`` after its warm-up and waits for the
    launcher's ``go-PHASE`` (JSON: ``start``, epoch seconds, and ``parties``, the number of
    processes); it starts its timed rounds at ``start``, writes ``done-PHASE-PID`` after them,
    and keeps training while fewer than ``parties`` done files exist. Without a folder, every
    method returns at once. A process gives up (exits) when its launcher is gone or after
    ``BARRIER_TIMEOUT`` seconds.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder, self.parties = folder, 1
        self.parent = os.getppid()

    def _check(self, since: float, what: str) -> None:
        if os.getppid() != self.parent:
            raise SystemExit(f"barrier {self.folder}: the launching process is gone")
        if time.time() - since > BARRIER_TIMEOUT:
            raise SystemExit(f"barrier {self.folder}: no {what} after {BARRIER_TIMEOUT:.0f} s")

    def start(self, phase: str) -> None:
        """Announce this process ready, wait for the go and then for its start time."""
        if self.folder is None:
            return
        (self.folder / f"ready-{phase}-{os.getpid()}").touch()
        go, since = self.folder / f"go-{phase}", time.time()
        while not go.exists():
            self._check(since, go.name)
            time.sleep(0.002)
        order = json.loads(go.read_text(encoding="utf-8"))  # written whole (temp, rename)
        self.parties = int(order["parties"])
        time.sleep(max(0.0, float(order["start"]) - time.time()))

    def finish(self, phase: str) -> None:
        if self.folder is not None:
            (self.folder / f"done-{phase}-{os.getpid()}").touch()

    def others_timing(self, phase: str, since: float) -> bool:
        """Whether some process has not finished its timed rounds of ``phase`` yet."""
        if self.folder is None:
            return False
        self._check(since, f"{self.parties} done-{phase} files")
        return len(list(self.folder.glob(f"done-{phase}-*"))) < self.parties


def batches(args: argparse.Namespace, device: torch.device) -> Callable[[bool], Batch]:
    """A batch source: the real patch sampler on --data, or random LA-sized volumes."""
    if args.data:
        dataset = PreparedDataset(Path(args.data))
        sampler = PatchSampler(dataset, labeled=dataset.split("labeled"),
                               unlabeled=dataset.split("unlabeled"), patch_size=args.patch,
                               labeled_batch_size=4, unlabeled_batch_size=4, augment="bcp",
                               seed=0, device=str(device))
        return lambda unl: sampler.next_batch(with_unlabeled=unl)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def random_batch(unl: bool) -> Batch:
        image = torch.randn(4, 1, *args.patch, generator=gen).to(device)
        label = (image[:, 0] > 0.5).long()
        unlabeled = torch.randn(4, 1, *args.patch, generator=gen).to(device) if unl else None
        return Batch(labeled_image=image, labeled_label=label, unlabeled_image=unlabeled)
    return random_batch


class Trial:
    """One seeded BCP framework in one phase with one optimizer, ready to iterate."""

    def __init__(self, spec: str, phase_name: str, args: argparse.Namespace,
                 device: torch.device, *, instrument: bool) -> None:
        spec, *features = spec.split("+")  # e.g. "sgd+batched+compile"
        name, _, mode = spec.partition(":")  # e.g. "sgd-hco" (default mode) or "sgd-hco:foreach"
        unknown = set(features) - {"batched", "compile", "compile-ro"}
        if unknown:
            raise SystemExit(f"unknown candidate(s) {sorted(unknown)}: batched, compile, "
                             "compile-ro")
        compile_mode = ("reduce-overhead" if "compile-ro" in features
                        else "default" if "compile" in features else None)
        self.diagnostics_every = int(mode[4:]) if mode.startswith("diag") else 0
        mode = "" if self.diagnostics_every else mode
        torch.manual_seed(0)
        cfg = BCPConfig(teacher_forward="batched" if "batched" in features else "auto")
        model_cfg = ModelConfig()

        def factory() -> torch.nn.Module:
            model = build_model(model_cfg, in_channels=1, num_classes=2).to(device)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            return compile_forward(model, compile_mode) if compile_mode else model
        self.device, self.iteration = device, 0
        self.diagnostics: list[Any] = []
        self.framework = build_framework(cfg, model_factory=factory, num_classes=2, device=device,
                                         seed=0)
        self.phase = next(p for p in self.framework.phases() if p.name == phase_name)
        self.framework.start_phase(self.phase)
        opt_name = plain_variant(name) if self.phase.plain_optimizer else name
        options = MODES[mode]
        self.watch = Stopwatch(device, instrument)
        opt = build_optimizer(opt_name, self.framework.trainable()["student"].parameters(),
                              **options)
        opt.step_two_source = self.watch.wrap(  # type: ignore[method-assign]
            "optimizer step", opt.step_two_source)
        self.optimizers: dict[str, torch.optim.Optimizer] = {"student": opt}
        fw: Any = self.framework  # a BCPFramework; its methods are wrapped for the stopwatch
        fw.pseudo_labels = self.watch.wrap("pseudo-labels", fw.pseudo_labels)
        fw.selftrain_losses = self.watch.wrap("forward+loss", fw.selftrain_losses)
        fw.pretrain_loss = self.watch.wrap("forward+loss", fw.pretrain_loss)
        self.next_batch = self.watch.wrap("data", batches(args, device))

    def iterate(self, count: int) -> None:
        """``count`` training iterations (module-level BCP helpers wrapped while they run)."""
        original = (bcp_module.two_source_step, bcp_module.ema_update_)
        setattr(bcp_module, "two_source_step", self.watch.wrap("backward", original[0]))  # noqa: B010
        setattr(bcp_module, "ema_update_", self.watch.wrap("ema", original[1]))  # noqa: B010
        try:
            for _ in range(count):
                batch = self.next_batch(self.phase.needs_unlabeled)
                every = self.diagnostics_every
                diagnose = every > 0 and (self.iteration + 1) % every == 0
                for opt in self.optimizers.values():
                    opt.diagnose = diagnose  # type: ignore[attr-defined]
                with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                    enabled=self.device.type == "cuda"):
                    self.framework.train_step(self.phase, batch, self.optimizers, self.iteration)
                if diagnose:  # kept on the device, as the loop keeps them until its flush
                    self.diagnostics.extend(o.take_diagnostics()  # type: ignore[attr-defined]
                                            for o in self.optimizers.values())
                self.iteration += 1
        finally:
            bcp_module.two_source_step, bcp_module.ema_update_ = original

    def stages(self, iterations: int) -> dict[str, float]:
        """Seconds per iteration per stage; nested stages are reported without their inner one."""
        out = {k: v / iterations for k, v in self.watch.seconds.items()}
        out["backward"] = out.get("backward", 0.0) - out.get("optimizer step", 0.0)
        out["forward+loss"] = out.get("forward+loss", 0.0) - out.get("pseudo-labels", 0.0)
        return out


def interleaved_times(specs: list[str], phase_name: str, args: argparse.Namespace,
                      device: torch.device, barrier: Barrier
                      ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per iteration of each round, and the rounds' wall window (epoch seconds: start,
    end, and ``busy_until``, the end of the untimed iterations that ``barrier`` asks for); each
    round runs every optimizer in turn, so that clock and load changes of the GPU touch all of
    them alike (a controlled same-process comparison)."""
    trials = {spec: Trial(spec, phase_name, args, device, instrument=False) for spec in specs}
    for trial in trials.values():
        trial.iterate(args.warmup)
    sync(device)
    barrier.start(phase_name)
    window = {"start": time.time()}
    times: dict[str, list[float]] = {spec: [] for spec in specs}
    for _ in range(args.rounds):
        for spec, trial in trials.items():
            sync(device)
            start = time.perf_counter()
            trial.iterate(args.iterations)
            sync(device)
            times[spec].append((time.perf_counter() - start) / args.iterations)
    window["end"] = time.time()
    barrier.finish(phase_name)
    first = next(iter(trials.values()))
    while barrier.others_timing(phase_name, window["end"]):  # the load the others measure under
        first.iterate(1)
    sync(device)
    window["busy_until"] = time.time()
    del trials
    return times, window


def instrumented_stages(spec: str, phase_name: str, args: argparse.Namespace,
                        device: torch.device) -> dict[str, float]:
    trial = Trial(spec, phase_name, args, device, instrument=True)
    trial.iterate(args.warmup)
    trial.watch.seconds.clear()
    trial.iterate(args.iterations)
    return trial.stages(args.iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="prepared LA dataset (default: random volumes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--optimizers",
                        default="sgd,sgd-hco,adamw-hco,sgd-hco:flat,sgd-hco:foreach",
                        help="names; ':flat' forces the torch flat step instead of the fused "
                        "kernels, ':foreach' the foreach step")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--phases", default="pretrain,selftrain", help="which BCP phases")
    parser.add_argument("--patch", default=",".join(map(str, PATCH)),
                        help="patch size x,y,z (default: LA's)")
    parser.add_argument("--no-stages", action="store_true",
                        help="leave out the instrumented run (stage columns)")
    parser.add_argument("--barrier", type=Path,
                        help="a folder shared with the other processes timed together")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.patch = tuple(int(v) for v in args.patch.split(","))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, BCP V-Net, patch {args.patch}, batch 4+4, "
          f"{'bf16 + channels_last' if device.type == 'cuda' else 'fp32'}, "
          f"{'LA data ' + args.data if args.data else 'random volumes'}")
    header = f"{'phase':<10}{'optimizer':<24}{'total ms':>9}" + "".join(f"{s:>15}" for s in STAGES)
    print(header + f"{'vs first':>10}{'x roofline':>11}")
    specs = args.optimizers.split(",")
    rows = []
    roofline, windows = {}, {}
    barrier = Barrier(args.barrier)
    for phase_name in args.phases.split(","):
        cost = bcp_iteration_cost(build_model(ModelConfig(), in_channels=1, num_classes=2),
                                  args.patch, phase=phase_name,
                                  activation_bytes=2 if device.type == "cuda" else 4)
        roofline[phase_name] = {"tflop": cost.flops / 1e12, "gbyte": cost.bytes / 1e9,
                                "ms": 1000 * cost.roofline_seconds()}
        print(f"{phase_name}: roofline {cost.flops / 1e12:.3f} TFLOP, {cost.bytes / 1e9:.2f} GB "
              f"per iteration -> {1000 * cost.roofline_seconds():.2f} ms at the H200's peaks "
              "(989 TFLOP/s bf16 dense, 4.8 TB/s)")
        times, windows[phase_name] = interleaved_times(specs, phase_name, args, device, barrier)
        totals = {spec: statistics.median(values) for spec, values in times.items()}
        for spec in specs:
            stages = ({} if args.no_stages
                      else instrumented_stages(spec, phase_name, args, device))
            ratio = totals[spec] / totals[specs[0]]
            over = totals[spec] / cost.roofline_seconds()
            rows.append({"phase": phase_name, "optimizer": spec, "ms": 1000 * totals[spec],
                         "ratio": ratio, "x_roofline": over,
                         "stages_ms": {k: 1000 * v for k, v in stages.items()},
                         "rounds_ms": [1000 * t for t in times[spec]]})
            row = f"{phase_name:<10}{spec:<24}{1000 * totals[spec]:>9.1f}"
            row += ("".join(f"{1000 * stages.get(s, 0.0):>15.1f}" for s in STAGES) if stages
                    else f"{'-':>15}" * len(STAGES))
            print(row + f"{ratio:>10.3f}{over:>11.1f}", flush=True)
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__, "data": args.data,
                               "iterations": args.iterations, "rounds": args.rounds,
                               "warmup": args.warmup, "patch": list(args.patch),
                               "roofline_h200": roofline, "rows": rows, "windows": windows})


if __name__ == "__main__":
    main()
