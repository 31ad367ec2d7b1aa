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
CUDA graphs (``compile: reduce-overhead``), ``+lcc-first`` BCP's order of the self-training
step (the pseudo-labels' largest-component step, which waits for the device, before the
student's forwards rather than after them, as hco ran it before 2026-12-01), ``+closs`` the
losses through ``torch.compile`` (``compile_losses: true``), ``+cupy-lcc`` the largest-component
step through CuPy's labelling (one host synchronisation per iteration: hco's GPU path before the
Triton union-find of ``hco_cli.ops.ccl_triton``, which needs none); e.g.
``--optimizers sgd,sgd+batched,sgd+compile,sgd+compile-ro,sgd+lcc-first``: ratios to the first
name are same-process comparisons. Compilation happens in the warm-up iterations (give
``--warmup`` enough).

``--barrier DIR`` is for several of these processes timed together on one GPU
(``benchmarks/concurrency.py``, which also gives ``--no-stages``, leaving the instrumented
run out): after its warm-up each process waits until all have warmed up and starts its timed
rounds at one wall time, then keeps training, untimed, until every process has finished its
timed rounds, so that each of its rounds runs beside all the others. The JSON also records the
wall window of each phase's timed rounds (``windows``: epoch seconds).

A roofline estimate is printed per phase (:mod:`hco_cli.models.roofline`): the network's
FLOPs and unfused bytes per iteration, the time the H200's datasheet peaks (989 TFLOP/s dense
bf16, 4.8 TB/s HBM3e) would allow, and how many times that each row's time is.

``--profile N`` (off by default) says where an iteration's time goes. After every timed
round (so the timings above are unaffected), each measured (phase, optimizer) gets a fresh
trial: ``--warmup`` iterations (compilation, CUDA-graph capture), one more for the profiler's
start-up, then N iterations under ``torch.profiler`` (CUDA activity on a CUDA device; on the
CPU the "kernels" are torch ops and their time is self CPU time). Everything is per
iteration (divided by N). Printed per (phase, optimizer), and in the JSON under the row's
``profile`` key:

- the top ``--profile-top`` kernels by total device time: ms/it, % of all profiled device
  time, calls/it, and the category (several, "a | b", where one name is launched from stages
  of different categories);
- the categories (``KERNEL_CATEGORIES``, one documented table: first matching row wins, by
  name pattern and, for the optimizer step, the EMA and the connected components, by the
  stage that launched the kernel); they add up to the total;
- the stages (where each kernel was launched: the host interval of the stage's
  ``record_function`` mark holds its launch call), so the teacher's pseudo-labels, the
  student's forward and the backward can be told apart although they run the same kernels;
  ``(no stage)`` is the step's bookkeeping, ``(unlinked)`` kernels whose launch call the
  profiler did not report;
- device busy time (the union of the kernels' intervals; the total counts overlapping
  kernels twice) against the measured wall time of the timed rounds: busy / wall is how much
  of the iteration the GPU worked, the rest it waited for the host (launches, Python, the
  pseudo-labels' one host synchronisation). Busy against the profiled iterations' own wall
  time is given too (the profiler slows the host, not the kernels);
- the kernels, memcpy and memset per iteration on the device, and on the host the kernel
  launch calls and CUDA-graph launches.

CUDA graphs (``+compile-ro``): a replay is one ``cudaGraphLaunch`` on the host; the kernels
it runs reach the profiler only if CUPTI reports them (linked to the graph launch, with no
torch op). The output counts the graph launches and the kernels seen inside them; where a
replay showed none, a note says that the graphed work is missing from every figure (they are
then lower bounds). ``--profile-trace DIR`` also writes a Chrome trace per (phase, optimizer)
(chrome://tracing, ui.perfetto.dev) to look at the timeline itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

import hco_cli.ssl.bcp as bcp_module
from hco_cli.data.batch import Batch
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.sampling import PatchSampler
from hco_cli.io_utils import write_json
from hco_cli.models import ModelConfig
from hco_cli.models.roofline import bcp_iteration_cost
from hco_cli.models.vnet import build_model, compile_forward
from hco_cli.ops.components import lcc_cupy
from hco_cli.optim import build_optimizer, plain_variant
from hco_cli.ssl.config import BCPConfig
from hco_cli.ssl.registry import build_framework
from hco_cli.training.setup import set_deterministic

PATCH = (112, 112, 80)
# ":foreach" forces the foreach step, ":flat" the torch flat step (no Triton kernels);
# ":diagN" keeps the default mode and asks for optimizer diagnostics every N iterations, as
# the training loop does with diagnostics_every = N (their overhead is this row vs the plain one).
MODES: dict[str, dict[str, Any]] = {"": {}, "foreach": {"foreach": True, "flat": False},
                                    "flat": {"fused": False}}
STAGES = ("data", "pseudo-labels", "forward+loss", "backward", "optimizer step", "ema")
BARRIER_TIMEOUT = 1800.0  # seconds a process waits for the others before it gives up

# --profile: the stages are marked for the profiler with record_function(STAGE_PREFIX + stage);
# "connected components" (the pseudo-labels' largest-component call) is a profiler stage only.
STAGE_PREFIX = "hco-stage:"
PROFILE_STAGES = (*STAGES[:2], "connected components", *STAGES[2:])
NO_STAGE = "(no stage)"  # launched outside the marked stages (the step's bookkeeping)
UNLINKED = "(unlinked)"  # a kernel whose launch call the profiler did not report

# Kernel categories of --profile, one table. A kernel (on the CPU: a torch op) falls into the
# FIRST row whose stage and name pattern both match it: stage None matches any stage (also an
# unknown one), pattern None any name; a pattern is a Python regular expression searched,
# case-insensitively, in the demangled kernel name (or the op's name). A kernel's stage is the
# innermost marked stage whose host interval holds its launch call (an op: its start). To add
# a category or catch a kernel that lands in "other", add a row above the row that takes it now
# (tests/benchmarks/test_train_step_profile.py lists known names and their categories).
# Caveats of names: the forward of the V-Net's transposed convolutions runs cuDNN's dgrad
# kernels and their backward-data its fprop kernels (the stage table tells the passes apart);
# a GEMM named without fprop/dgrad/wgrad counts as a forward convolution (the V-Net has no
# linear layer); Inductor (torch.compile) names a Triton kernel after every op fused into it
# ("triton_poi_fused__native_batch_norm_legit_functional_convolution_relu_3" is BatchNorm +
# ReLU), so its Triton kernels are matched before the cuDNN names.
KERNEL_CATEGORIES: tuple[tuple[str, tuple[str, ...] | None, str | None], ...] = (
    # CPU: the autograd engine's own events (their self time is bookkeeping)
    ("other", None, r"^autograd::|^torch::autograd::|^\w+Backward\d+$"),
    # all that a single-purpose stage launches, whatever its name (the flat optimizer step's
    # elementwise kernels, the EMA's foreach kernels, the histogram after CuPy's label)
    ("optimizer", ("optimizer step",), None),
    ("ema", ("ema",), None),
    ("connected components", ("connected components",), None),
    # by name alone (a kernel whose launch was not linked: CuPy's label kernels, its sort, the
    # Triton union-find's kernels; nothing else in the step sorts or builds a histogram)
    ("connected components", None,
     r"cupy|ndimage_label|kernelHistogram|thrust::|DeviceRadixSort"
     r"|^_(merge|flatten)_kernel"),
    ("optimizer", None, r"multi_tensor_apply|_foreach_|_fused_(sgd|adam)|Fused(Sgd|Adam)"
     r"|_(sgd|adam)_(mask|apply)_kernel|_close_counts"),
    ("batch/instance norm", None, r"^triton_\w*(batch_norm|instance_norm|group_norm)"),
    ("elementwise/reduction", None, r"^triton_(poi|red|per)_"),
    ("softmax/loss", None, r"softmax|nll_loss|cross_entropy|mse_loss"),
    ("conv backward data", None, r"dgrad"),
    ("conv backward weight", None, r"wgrad|bwd_filter|splitKreduce|scalePackedTensor"),
    # one op computing both gradients (the CPU's aten::convolution_backward)
    ("conv backward data+weight", None, r"convolution_backward"),
    ("conv forward", None,
     r"fprop|convol|conv[23]d|conv_transpose|implicit_gemm|xmma|cutlass|gemm"),
    ("batch/instance norm", None, r"batch_?norm|bn_fw|bn_bw|instance_?norm|group_?norm|welford"),
    ("copy/memset/cast", None, r"^memcpy|^memset|copy|CatArray|^aten::cat$|fill|^aten::zero_"
     r"|nchwToNhwc|nhwcToNchw|^aten::to$|^aten::contiguous$|^aten::clone$"),
    ("elementwise/reduction", None,
     r"elementwise|reduce|functor|index|scatter|gather|dropout|bernoulli|max_pool|histc"
     r"|^aten::(add|sub|rsub|mul|div|relu|clamp|threshold|where|sum|mean|amax|max|min|argmax"
     r"|eq|ne|ge|gt|lt|le|logical|bitwise|neg|exp|log|sqrt|rsqrt|pow|abs|sign|lerp|addcmul"
     r"|addcdiv|masked|square|reciprocal|maximum|minimum|sigmoid|tanh)(_\w*)?$"),
    ("other", None, None),
)
# The order of the printed category table (every category of KERNEL_CATEGORIES, once).
CATEGORY_NAMES = ("conv forward", "conv backward data", "conv backward weight",
                  "conv backward data+weight", "batch/instance norm", "elementwise/reduction",
                  "softmax/loss", "copy/memset/cast", "connected components", "optimizer", "ema",
                  "other")
RUNTIME_CALL = re.compile(r"^cu(da)?[A-Z]")  # CUDA runtime and driver API calls (host side)
LAUNCH_CALL = re.compile(r"^cu(da)?Launch")
GRAPH_LAUNCH = re.compile(r"^cu(da)?GraphLaunch")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates synchronised wall time per stage (only when enabled); with ``annotate``,
    marks each stage for the profiler (``record_function``, no synchronisation)."""

    def __init__(self, device: torch.device, enabled: bool, annotate: bool = False) -> None:
        self.device, self.enabled, self.annotate = device, enabled, annotate
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

        def annotated(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(STAGE_PREFIX + stage):
                return timed(*args, **kwargs)
        return annotated if self.annotate else timed


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
    # drawn on the device: host-drawn volumes took 50 ms of the iteration (2026-12-02, det-ro),
    # more than the step itself under CUDA graphs, where the sampler's batches take about 2 ms
    gen = torch.Generator(device=device).manual_seed(0)

    def random_batch(unl: bool) -> Batch:
        image = torch.randn(4, 1, *args.patch, generator=gen, device=device)
        label = (image[:, 0] > 0.5).long()
        unlabeled = (torch.randn(4, 1, *args.patch, generator=gen, device=device)
                     if unl else None)
        return Batch(labeled_image=image, labeled_label=label, unlabeled_image=unlabeled)
    return random_batch


CANDIDATES = ("batched", "compile", "compile-ro", "lcc-first", "closs", "cupy-lcc")


def _cupy_components(mask: Tensor, *, connectivity: int = 26) -> Tensor:
    """``+cupy-lcc``: ``largest_connected_component`` of a CUDA mask through CuPy."""
    volumes = mask.bool().reshape(-1, *mask.shape[-3:])
    return lcc_cupy(volumes, connectivity).reshape(mask.shape)


def _components_first(fw: Any) -> None:
    """``+lcc-first``: the largest-component step right behind the teacher's forwards, before
    the student's (BCP's order); the later call in the step returns what that one computed. Same
    numbers (the step draws no random numbers), other timing."""
    labels_of, components_of = fw.teacher_labels, fw.largest_components
    done: list[list[Tensor]] = []

    def teacher_labels(*halves: Tensor) -> Tensor:
        labels = labels_of(*halves)
        done.append(components_of(labels, [h.shape[0] for h in halves]))
        return labels

    def largest_components(labels: Tensor, sizes: list[int]) -> list[Tensor]:
        return done.pop()

    fw.teacher_labels, fw.largest_components = teacher_labels, largest_components


class Trial:
    """One seeded BCP framework in one phase with one optimizer, ready to iterate."""

    def __init__(self, spec: str, phase_name: str, args: argparse.Namespace,
                 device: torch.device, *, instrument: bool, annotate: bool = False) -> None:
        spec, *features = spec.split("+")  # e.g. "sgd+batched+compile"
        name, _, mode = spec.partition(":")  # e.g. "sgd-hco" (default mode) or "sgd-hco:foreach"
        unknown = set(features) - set(CANDIDATES)
        if unknown:
            raise SystemExit(f"unknown candidate(s) {sorted(unknown)}: {', '.join(CANDIDATES)}")
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
        self.cupy_lcc = "cupy-lcc" in features
        self.diagnostics: list[Any] = []
        self.framework = build_framework(cfg, model_factory=factory, num_classes=2, device=device,
                                         seed=0, compile_losses="closs" in features)
        self.phase = next(p for p in self.framework.phases() if p.name == phase_name)
        self.framework.start_phase(self.phase)
        opt_name = plain_variant(name) if self.phase.plain_optimizer else name
        options = MODES[mode]
        self.watch = Stopwatch(device, instrument, annotate)
        opt = build_optimizer(opt_name, self.framework.trainable()["student"].parameters(),
                              **options)
        opt.step_two_source = self.watch.wrap(  # type: ignore[method-assign]
            "optimizer step", opt.step_two_source)
        self.optimizers: dict[str, torch.optim.Optimizer] = {"student": opt}
        fw: Any = self.framework  # a BCPFramework; its methods are wrapped for the stopwatch
        if "lcc-first" in features:
            _components_first(fw)
        # The teacher's forwards and the component step, which self-training queues after the
        # student's forwards (BCPFramework.selftrain_losses): one stage, as before the split.
        fw.teacher_labels = self.watch.wrap("pseudo-labels", fw.teacher_labels)
        fw.largest_components = self.watch.wrap("pseudo-labels", fw.largest_components)
        fw.selftrain_losses = self.watch.wrap("forward+loss", fw.selftrain_losses)
        fw.pretrain_loss = self.watch.wrap("forward+loss", fw.pretrain_loss)
        self.next_batch = self.watch.wrap("data", batches(args, device))

    def iterate(self, count: int) -> None:
        """``count`` training iterations (module-level BCP helpers wrapped while they run)."""
        original = (bcp_module.two_source_step, bcp_module.ema_update_,
                    bcp_module.largest_connected_component, bcp_module.keep_largest_per_class)
        setattr(bcp_module, "two_source_step", self.watch.wrap("backward", original[0]))  # noqa: B010
        setattr(bcp_module, "ema_update_", self.watch.wrap("ema", original[1]))  # noqa: B010
        lcc = _cupy_components if self.cupy_lcc else original[2]
        setattr(bcp_module, "largest_connected_component", lcc)  # noqa: B010
        if self.watch.annotate:  # a profiler stage only (the stopwatch's stages stay as they were)
            for attr, fn in (("largest_connected_component", lcc),
                             ("keep_largest_per_class", original[3])):
                setattr(bcp_module, attr, self.watch.wrap("connected components", fn))
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
            (bcp_module.two_source_step, bcp_module.ema_update_,
             bcp_module.largest_connected_component, bcp_module.keep_largest_per_class) = original

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


@cache
def _category_rules() -> list[tuple[str, tuple[str, ...] | None, re.Pattern[str] | None]]:
    return [(category, stages, None if pattern is None else re.compile(pattern, re.IGNORECASE))
            for category, stages, pattern in KERNEL_CATEGORIES]


def categorize(name: str, stage: str | None = None) -> str:
    """The category of a kernel (or CPU op) ``name`` launched in ``stage`` (None: unknown):
    the first row of :data:`KERNEL_CATEGORIES` that matches both."""
    for category, stages, pattern in _category_rules():
        if (stages is None or stage in stages) and (pattern is None or pattern.search(name)):
            return category
    return "other"


class Activity(NamedTuple):
    """One piece of profiled work: a kernel, memcpy or memset on the device, or (CPU) a torch
    op with its self time; ``us`` is its duration (an op: self time), ``stage`` where it was
    launched, ``graph`` whether a CUDA-graph replay launched it."""

    name: str
    kind: str
    start: float
    end: float
    us: float
    stage: str
    graph: bool = False


def _stage_ranges(events: Iterable[Any]) -> list[tuple[float, float, str]]:
    """(start, end, stage) of the host intervals marked by :class:`Stopwatch` (µs), outer
    before inner where two start together."""
    return sorted(((e.time_range.start, e.time_range.end, e.name[len(STAGE_PREFIX):])
                   for e in events if e.device_type == torch.autograd.DeviceType.CPU
                   and e.name.startswith(STAGE_PREFIX)), key=lambda r: (r[0], -r[1]))


def _stage_at(ranges: Sequence[tuple[float, float, str]], t: float) -> str:
    """The innermost marked stage holding host time ``t`` (nested intervals: the last one in
    :func:`_stage_ranges`' order that holds it)."""
    inner = NO_STAGE
    for start, end, stage in ranges:
        if start > t:
            break
        if t <= end:
            inner = stage
    return inner


def profile_activities(events: Sequence[Any], *, cuda: bool
                       ) -> tuple[list[Activity], dict[str, int]]:
    """The work in profiler events (``torch.profiler.profile().events()``) and host counts.

    CUDA: every kernel, memcpy and memset the profiler reports on the device (leaving out the
    device-side copies of user-scope record_function ranges: annotations, or named as a user
    annotation), each linked by its correlation id to its host launch call, whose time gives
    its stage; a kernel linked to a graph launch is a graph replay's. CPU: every torch op, by
    self time (record_function ranges and Python functions left out), staged by its start.
    Counts: ``launch_calls``, ``graph_launches``, ``graph_launches_empty`` (replays of which
    no kernel was reported), ``unlinked`` (kernels with no launch call seen), ``op_calls``.
    """
    cpu = torch.autograd.DeviceType.CPU
    ranges = _stage_ranges(events)
    host = [e for e in events if e.device_type == cpu]
    counts = {"launch_calls": 0, "graph_launches": 0, "graph_launches_empty": 0, "unlinked": 0,
              "op_calls": sum(e.name.startswith("aten::") for e in host)}
    out: list[Activity] = []
    if not cuda:
        for e in host:
            if (e.name.startswith(STAGE_PREFIX) or e.name.startswith("ProfilerStep")
                    or getattr(e, "is_user_annotation", False)
                    or getattr(e, "is_python_function", False)):
                continue
            start = e.time_range.start
            out.append(Activity(e.name, "op", start, e.time_range.end,
                                float(e.self_cpu_time_total), _stage_at(ranges, start)))
        return out, counts
    # record_function ranges of user scope (these stages, torch.compile's "## Call
    # CompiledFxGraph ##", the profiler's steps) have a device-side copy of the same name;
    # Inductor's per-kernel ranges are of function scope and share their Triton kernel's name
    annotations = {e.name for e in host if getattr(e, "is_user_annotation", False)}
    launches: dict[int, tuple[float, bool]] = {}  # correlation id -> (host time, graph launch)
    replayed: set[int] = set()  # graph launches of which a kernel was reported
    for e in host:
        if RUNTIME_CALL.match(e.name):
            graph = bool(GRAPH_LAUNCH.match(e.name))
            launches[e.id] = (e.time_range.start, graph)
            counts["graph_launches"] += graph
            counts["launch_calls"] += bool(LAUNCH_CALL.match(e.name)) and not graph
    for e in events:
        kind_of = str(getattr(e, "activity_type", "") or "").lower()
        if (e.device_type == cpu or "annotation" in kind_of or "sync" in kind_of
                or getattr(e, "is_user_annotation", False) or e.name in annotations
                or e.name.startswith((STAGE_PREFIX, "ProfilerStep"))):
            continue
        lower = e.name.lower()
        kind = ("memcpy" if "memcpy" in kind_of or lower.startswith("memcpy") else
                "memset" if "memset" in kind_of or lower.startswith("memset") else "kernel")
        launch = launches.get(e.id)
        counts["unlinked"] += launch is None
        stage = UNLINKED if launch is None else _stage_at(ranges, launch[0])
        out.append(Activity(e.name, kind, e.time_range.start, e.time_range.end,
                            float(e.time_range.end - e.time_range.start), stage,
                            graph=launch is not None and launch[1]))
        if launch is not None and launch[1]:
            replayed.add(e.id)
    counts["graph_launches_empty"] = sum(graph and cid not in replayed
                                         for cid, (_, graph) in launches.items())
    return out, counts


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time any of them was running."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profile_summary(activities: Sequence[Activity], counts: dict[str, int], *, iterations: int,
                    cuda: bool, measured_ms: float, profiled_ms: float) -> dict[str, Any]:
    """Per-iteration times (ms) and counts of profiled work, by name, category and stage, as
    the JSON's ``profile`` and :func:`format_profile` give them."""
    per_it = 1.0 / iterations
    total_us = sum(a.us for a in activities)

    def entry(us: float, count: float) -> dict[str, float]:
        return {"ms": us / 1000 * per_it, "percent": 100 * us / total_us if total_us else 0.0,
                "count": count * per_it}

    # [µs, count] per category (all, in table order), stage and name
    by_category = {c: [0.0, 0.0] for c in CATEGORY_NAMES}
    by_stage = {s: [0.0, 0.0] for s in (*PROFILE_STAGES, NO_STAGE, UNLINKED)}
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    categories_of: dict[str, set[str]] = defaultdict(set)
    for a in activities:
        category = categorize(a.name, None if a.stage == UNLINKED else a.stage)
        categories_of[a.name].add(category)
        for slot in (by_category[category], by_stage.setdefault(a.stage, [0.0, 0.0]),
                     by_name[a.name]):
            slot[0] += a.us
            slot[1] += 1
    kernels = [{"name": name, "category": " | ".join(sorted(categories_of[name])),
                **entry(us, n)}
               for name, (us, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])]
    busy_ms = _union_us((a.start, a.end) for a in activities) / 1000 * per_it
    graph = [a for a in activities if a.graph]
    kinds = {k: sum(a.kind == k for a in activities) * per_it
             for k in ("kernel", "memcpy", "memset")}
    summary: dict[str, Any] = {
        "iterations": iterations, "device": "cuda" if cuda else "cpu",
        "what": ("CUDA kernels, memcpy and memset on the device (their durations)" if cuda else
                 "torch ops on the CPU (their self time)"),
        "measured_ms": measured_ms, "profiled_ms": profiled_ms,
        "total_ms": total_us / 1000 * per_it, "busy_ms": busy_ms,
        "busy_fraction": busy_ms / measured_ms if measured_ms > 0 else None,
        "busy_fraction_profiled": busy_ms / profiled_ms if profiled_ms > 0 else None,
        "kernels_per_it": kinds["kernel"], "memcpy_per_it": kinds["memcpy"],
        "memset_per_it": kinds["memset"], "op_calls_per_it": counts["op_calls"] * per_it,
        "launch_calls_per_it": counts["launch_calls"] * per_it,
        "graph_launches_per_it": counts["graph_launches"] * per_it,
        "graph_launches_hidden_per_it": counts["graph_launches_empty"] * per_it,
        "graph_kernels_per_it": len(graph) * per_it,
        "graph_kernels_ms": sum(a.us for a in graph) / 1000 * per_it,
        "unlinked_kernels_per_it": counts["unlinked"] * per_it,
        "categories": {c: entry(us, n) for c, (us, n) in by_category.items()},
        "stages": {s: entry(us, n) for s, (us, n) in by_stage.items() if n},
        "kernels": kernels,
        "notes": [],
    }
    notes = summary["notes"]
    if not cuda:
        notes.append("CPU: self time of torch ops, not kernels; work outside torch ops "
                     "(Python, scipy's connected components) is in none of them but in the "
                     "gap between busy and measured")
    graphs, hidden = summary["graph_launches_per_it"], summary["graph_launches_hidden_per_it"]
    if hidden:
        notes.append(f"{hidden:g} of {graphs:g} CUDA-graph replays per iteration HIDE their "
                     "kernels: the profiler reported none, so the totals, categories, stages "
                     "and busy time leave their work out (lower bounds)")
    if graph:
        notes.append(f"CUDA-graph replays: the profiler resolved "
                     f"{summary['graph_kernels_per_it']:g} kernels/it "
                     f"({summary['graph_kernels_ms']:.2f} ms/it) in {graphs - hidden:g} replays "
                     "per iteration, counted above (no torch op is linked to a replayed "
                     "kernel; only what the profiler reported is seen)")
    if cuda and counts["unlinked"]:
        notes.append(f"{summary['unlinked_kernels_per_it']:g} kernels/it had no launch call "
                     f"in the profile: stage {UNLINKED}, categorised by name alone")
    if busy_ms > measured_ms > 0:
        notes.append("busy exceeds the measured wall time: the profiled iterations ran slower "
                     "than the timed ones (profiler overhead, or another load)")
    return summary


def _short(name: str, width: int) -> str:
    """A kernel's name for the table: a demangled signature ("void ns::kernel<...>(args)")
    without "void", its arguments and torch's namespaces, cut to ``width``."""
    if name.startswith("void "):
        name = name[5:]
        for noise in ("(anonymous namespace)::", "at::native::", "at::cuda::"):
            name = name.replace(noise, "")
        depth = 0
        for i, char in enumerate(name):
            depth += (char == "<") - (char == ">")
            if char == "(" and depth == 0:
                name = name[:i]
                break
    return name if len(name) <= width else name[:width - 3] + "..."


def format_profile(phase_name: str, spec: str, summary: dict[str, Any], top: int) -> str:
    """The printed tables of one (phase, optimizer) profile."""
    cuda = summary["device"] == "cuda"
    unit = "kernels" if cuda else "ops"
    lines = [f"profile {phase_name} {spec}: {summary['iterations']} iterations, "
             f"{summary['what']}; per iteration"]
    lines.append(f"  {'top ' + str(top) + ' ' + unit:<72}{'ms/it':>9}{'%':>7}{'calls/it':>10}"
                 "  category")
    for k in summary["kernels"][:top]:
        lines.append(f"  {_short(k['name'], 72):<72}{k['ms']:>9.3f}{k['percent']:>7.1f}"
                     f"{k['count']:>10.1f}  {k['category']}")
    lines.append(f"  {'category':<72}{'ms/it':>9}{'%':>7}{'calls/it':>10}")
    for name, c in summary["categories"].items():
        lines.append(f"  {name:<72}{c['ms']:>9.3f}{c['percent']:>7.1f}{c['count']:>10.1f}")
    lines.append(f"  {'total':<72}{summary['total_ms']:>9.3f}{100.0:>7.1f}"
                 f"{sum(c['count'] for c in summary['categories'].values()):>10.1f}")
    lines.append(f"  {'stage (where launched)':<72}{'ms/it':>9}{'%':>7}{'calls/it':>10}")
    for name, c in summary["stages"].items():
        lines.append(f"  {name:<72}{c['ms']:>9.3f}{c['percent']:>7.1f}{c['count']:>10.1f}")
    def share(fraction: float | None) -> str:
        if fraction is None:
            return ""
        idle = f", idle {100 - 100 * fraction:.0f}%" if fraction <= 1 else ""
        return f" ({100 * fraction:.0f}%{idle})"
    lines.append(f"  {'device' if cuda else 'CPU'} busy {summary['busy_ms']:.2f} ms/it of "
                 f"{summary['measured_ms']:.2f} ms/it measured (timed rounds)"
                 f"{share(summary['busy_fraction'])}, of {summary['profiled_ms']:.2f} ms/it in "
                 f"the profiled iterations{share(summary['busy_fraction_profiled'])}")
    if cuda:
        lines.append(f"  per iteration: {summary['kernels_per_it']:g} kernels, "
                     f"{summary['memcpy_per_it']:g} memcpy, {summary['memset_per_it']:g} "
                     f"memset on the device; {summary['launch_calls_per_it']:g} kernel launch "
                     f"calls, {summary['graph_launches_per_it']:g} graph launches on the host")
    else:
        lines.append(f"  per iteration: {summary['op_calls_per_it']:g} aten op calls")
    lines.extend(f"  note: {note}" for note in summary["notes"])
    if summary.get("trace"):
        lines.append(f"  trace: {summary['trace']}")
    return "\n".join(lines)


def profiled_iterations(spec: str, phase_name: str, args: argparse.Namespace,
                        device: torch.device, measured_ms: float) -> dict[str, Any]:
    """``args.profile`` iterations of a fresh, warmed-up trial under ``torch.profiler``:
    ``args.warmup`` iterations first (compilation, CUDA-graph capture), then one for the
    profiler's own start-up (not recorded), then the profiled ones, synchronised at both
    ends. Returns :func:`profile_summary`'s dict (with ``warmup`` and ``trace``)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = device.type == "cuda"
    trial = Trial(spec, phase_name, args, device, instrument=False, annotate=True)
    trial.iterate(args.warmup)
    sync(device)
    n = args.profile
    captured: dict[str, Any] = {}
    trace = None
    if args.profile_trace:
        args.profile_trace.mkdir(parents=True, exist_ok=True)
        trace = args.profile_trace / (re.sub(r"[^A-Za-z0-9_.-]", "_", f"{phase_name}-{spec}")
                                      + ".json")

    def ready(prof: Any) -> None:
        captured["events"] = list(prof.events())
        if trace is not None:
            prof.export_chrome_trace(str(trace))

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=n, repeat=1),
                 on_trace_ready=ready) as prof:
        trial.iterate(1)  # the profiler's warm-up step
        sync(device)
        prof.step()
        start = time.perf_counter()
        for i in range(n):
            trial.iterate(1)
            if i == n - 1:
                sync(device)
                seconds = time.perf_counter() - start
            prof.step()
    del trial
    found, counts = profile_activities(captured["events"], cuda=cuda)
    summary = profile_summary(found, counts, iterations=n, cuda=cuda, measured_ms=measured_ms,
                              profiled_ms=1000 * seconds / n)
    summary["warmup"] = args.warmup
    summary["trace"] = None if trace is None else str(trace)
    return summary


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
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic cuDNN and torch algorithms, no autotuning (hco "
                        "train's deterministic: true); the default autotunes, as training does")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timed rounds, profile N iterations of each (phase, "
                        "optimizer) with torch.profiler: top kernels, categories, stages")
    parser.add_argument("--profile-top", type=int, default=15, metavar="K",
                        help="kernels (CPU: ops) listed per profile")
    parser.add_argument("--profile-trace", type=Path, metavar="DIR",
                        help="also export a Chrome trace per (phase, optimizer) into DIR")
    args = parser.parse_args()
    if args.profile < 0 or (args.profile_trace and not args.profile):
        parser.error("--profile takes N >= 1 iterations; --profile-trace needs --profile")
    args.patch = tuple(int(v) for v in args.patch.split(","))
    device = torch.device(args.device)
    if device.type == "cuda":
        set_deterministic(args.deterministic)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, BCP V-Net, patch {args.patch}, batch 4+4, "
          f"{'bf16 + channels_last' if device.type == 'cuda' else 'fp32'}, "
          f"{'LA data ' + args.data if args.data else 'random volumes'}")
    header = f"{'phase':<10}{'optimizer':<24}{'total ms':>9}" + "".join(f"{s:>15}" for s in STAGES)
    print(header + f"{'vs first':>10}{'x roofline':>11}")
    specs = args.optimizers.split(",")
    rows: list[dict[str, Any]] = []
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
    for result in rows if args.profile else []:  # after every timed round
        result["profile"] = profiled_iterations(result["optimizer"], result["phase"], args,
                                                device, measured_ms=result["ms"])
        print(format_profile(result["phase"], result["optimizer"], result["profile"],
                             args.profile_top), flush=True)
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__, "data": args.data,
                               "iterations": args.iterations, "rounds": args.rounds,
                               "warmup": args.warmup, "patch": list(args.patch),
                               "deterministic": args.deterministic,
                               "roofline_h200": roofline, "rows": rows, "windows": windows})


if __name__ == "__main__":
    main()
