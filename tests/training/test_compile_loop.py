"""``compile: true`` through the real training loop: BCP self-training (from one pre-trained
checkpoint; sgd, sgd-hco, and sgd-hco with grad_split region) and mean teacher (sgd, sgd-hco)
end where the eager runs of the same seed end: student, EMA teacher (weights and BatchNorm
statistics), logged losses and validation Dice. With dropout: compiled code draws eager's masks
(``fallback_random``, hco_cli/models/vnet.py).

tests/models/test_compile.py checks the bare network; this checks what the loop adds around it:
the two gradients of an hco step through one compiled forward, the teacher's no-grad train-mode
forwards, the EMA update, and validation in eval mode under inference_mode.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

# Imported at collection, as in tests/models/test_compile.py: inductor reads its kernel
# templates with the locale's encoding, which a later test may have left ASCII.
import torch._inductor.compile_fx
from torch import Tensor, nn

from hco_cli.config import TrainConfig
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.models import vnet
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.training import setup as run_setup
from hco_cli.training.entry import train
from hco_cli.training.logging import read_metrics
from tests.training.test_loop import tiny_config

# The weights after the compiled run, per tensor, within TOLERANCE x (largest |value| of that
# tensor) of the eager run's. In float64 the compiled kernels (reductions summed in another
# order) leave ~1e-13 of a tensor's scale after the first step; every further step multiplies
# the difference by 3 to 7 (BatchNorm over the 6x6x5 bottleneck voxels of a sample), measured at
# most 5e-12 after 4 steps (BCP; 3e-13 mean teacher), so 1e-8 leaves a margin of 2000. A second
# gradient through a compiled forward wrong by a relative 1e-6 (injected by hand) fails both
# tests: by 5e-3 (BCP, grad_split region) and 5e-8 (mean teacher).
#
# Why float64: the loop trains in float32 only, and there a float32 rounding difference flips
# hco mask elements (phi = 1[a b > 0], rescaled by 1 / mean(phi) per tensor, which for a
# BatchNorm vector of 4 channels changes the step of the whole vector) and pseudo-label voxels
# near p = 0.5: measured, eager and compiled float32 runs of a set-up like this one differ by
# 1e-3 after one sgd-hco step and by O(1) after three, with the fix in place, so no tolerance
# separates rounding from a wrong gradient. Here the network alone runs in float64 (the images,
# float32, convert exactly); loop, frameworks, optimizers, EMA and validation are the real ones.
TOLERANCE = 1e-8
# The fraction of hco mask elements admitted may differ by the share of parameters whose gradient
# is zero but for rounding, so that its sign, and their mask element, is arbitrary: the biases of
# the convolutions in front of BatchNorm, 700 of the network's 556,378 elements (0.13%).
ADMITTED_TOLERANCE = 700 / 556_378
ITERATIONS = 4
# Two down-samplings instead of four: the default layout, on its smallest patch (32x32x16),
# normalises its bottleneck over 2 voxels per sample, which amplified the float64 rounding
# difference 100- to 500-fold per step (1.6e-4 after 4 steps).
STRIDES = [[2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]
# sgd first: its one backward per step compiles the student's backward, as BCP's pre-training
# does in a full run, and torch decides then whether that backward donates (frees and reuses) its
# saved buffers; sgd-hco then takes g_L and g_U through it. A backward first compiled in sgd-hco's
# g_L pass (retain_graph=True) never donates, which would hide a donated-buffer regression.
OPTIMIZERS = ("sgd", "sgd-hco")
# Four labeled and four unlabeled patches: the student and the teacher each see halves of two.
BCP_BATCHES: dict[str, Any] = {"data__labeled_batch_size": 4, "data__unlabeled_batch_size": 4}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=4, val=1, test=0, shape=(24, 24, 20))
    return out


def _float64_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.double() if isinstance(a, Tensor) else a for a in args)


@dataclass
class Spy:
    """Forwards that ran compiled code (per network mode and grad mode), and every built
    network's initial weights."""

    calls: Counter[str] = field(default_factory=Counter)
    built: list[dict[str, Tensor]] = field(default_factory=list)
    modes: set[str] = field(default_factory=set)
    eval_batches: set[int] = field(default_factory=set)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    """Float64 V-Nets for every run, watched by a :class:`Spy`."""
    seen = Spy()
    build, compiled = vnet.build_model, vnet._compiled

    def build_float64(*args: Any, **kwargs: Any) -> nn.Module:
        net = build(*args, **kwargs).double()
        net.register_forward_pre_hook(_float64_input)
        seen.built.append({k: v.clone() for k, v in net.state_dict().items()})
        return net

    def counted(mode: str) -> Callable[[vnet.VNet, Tensor], Tensor]:
        fn = compiled(mode)

        def run(net: vnet.VNet, x: Tensor) -> Tensor:
            seen.modes.add(mode)
            if not net.training:
                seen.eval_batches.add(x.shape[0])
            seen.calls[("train" if net.training else "eval")
                       + ("/grad" if torch.is_grad_enabled() else "/no-grad")] += 1
            return fn(net, x)

        return run

    monkeypatch.setattr(run_setup, "build_model", build_float64)
    monkeypatch.setattr(vnet, "_compiled", counted)
    yield seen


# Where and how the compiled run compiles: the CPU in torch's default mode (the default suite),
# and CUDA graphs ("reduce-overhead") on a GPU, where graph-owned buffers (saved activations,
# outputs and gradients that a later replay overwrites) could corrupt what a step keeps, the
# g_L held while g_U goes back through the same forward above all, and dropout masks drawn
# inside graphs (per replay, the backward's the forward's).
TARGETS = [
    pytest.param(("cpu", "default"), id="cpu-default"),
    pytest.param(("cuda", "reduce-overhead"), id="cuda-graphs", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
]


def _config(data: Path, run: Path, compiled: str | None = None, *, optimizer: str,
            device: str = "cpu", **changes: Any) -> TrainConfig:
    """With the V-Net's dropout (compiled code draws eager's masks: ``fallback_random``),
    validated every 2 iterations; ``compiled``: torch's compile mode, None for eager."""
    return tiny_config(data, run, data__patch_size=[24, 24, 20], model__dropout=True,
                       model__strides=STRIDES, framework__selftrain_iterations=ITERATIONS,
                       validation__every=2, log_every=1, device=device,
                       compile=False if compiled is None else compiled,
                       optimizer={"name": optimizer, "lr": 0.01, "momentum": 0.9}, **changes)


def _train_twice(make: Callable[[Path, str | None], TrainConfig], spy: Spy, tmp_path: Path,
                 mode: str) -> tuple[Path, Path]:
    """An eager run and a run compiled in ``mode`` of the same config. The compiled one runs
    every forward compiled: the student's (train mode, with gradients), the teacher's (train
    mode, without) and validation's (eval mode, inference_mode); the eager one none."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(make(eager, None))
    assert not spy.calls
    config = make(compiled, mode)
    train(config)
    assert set(spy.calls) == {"train/grad", "train/no-grad", "eval/no-grad"}, spy.calls
    assert spy.modes == {mode}, spy.modes
    # validation pads each case's last batch of windows (here its only window): one shape
    assert spy.eval_batches == {config.validation.batch_size}, spy.eval_batches
    spy.calls.clear()
    return eager, compiled


def _networks(run: Path) -> dict[str, Tensor]:
    state = load_checkpoint(run / "checkpoints/last.pt")["framework"]["networks"]
    return {f"{net}/{key}": value for net, tensors in state.items()
            for key, value in tensors.items()}


def _relative_difference(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _assert_same_training(eager: Path, compiled: Path, *, start: dict[str, Tensor]) -> None:
    want, got = _networks(eager), _networks(compiled)
    assert want.keys() == got.keys() and any(k.startswith("teacher/") for k in want)
    for key, a in want.items():
        b = got[key]
        assert b.dtype == a.dtype, key
        if not a.is_floating_point():  # BatchNorm's num_batches_tracked
            assert torch.equal(a, b), key
            continue
        assert a.dtype == torch.float64, key
        assert _relative_difference(a, b) < TOLERANCE, (key, _relative_difference(a, b))
    # Not vacuous: the student moved far more than the tolerance, and the teacher follows it.
    moved = max(_relative_difference(want[k], start[k]) for k in start)
    assert moved > 1e4 * TOLERANCE
    lagging = max(_relative_difference(want[k.replace("student/", "teacher/")], want[k])
                  for k in start)
    assert lagging > 1e4 * TOLERANCE
    records = {run: read_metrics(run / "metrics.jsonl") for run in (eager, compiled)}
    steps = [[r for r in records[run] if r["phase"] != "val"] for run in (eager, compiled)]
    assert len(steps[0]) == len(steps[1]) >= ITERATIONS
    for a_step, b_step in zip(*steps, strict=True):
        for name in ("loss_l", "loss_u", "admitted"):  # logged in float32; sgd admits None
            a_value, b_value = a_step[name], b_step[name]
            assert (a_value is None) == (b_value is None), name
            tolerance = ADMITTED_TOLERANCE if name == "admitted" else 1e-6 * abs(a_value)
            assert b_value == pytest.approx(a_value, abs=tolerance), (name, a_step["iter"])
    vals = [[r["dice"] for r in records[run] if r["phase"] == "val"] for run in (eager, compiled)]
    assert len(vals[0]) >= 2 and all(0 < d <= 1 for d in vals[0])
    # The networks agree to ~1e-11, so do their eval-mode (running statistics) probabilities:
    # a voxel's argmax, and with it the Dice, could only change at a probability that close
    # to 0.5.
    assert vals[1] == pytest.approx(vals[0], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_compiled_bcp_selftraining_matches_eager(synthetic: Path, tmp_path: Path, spy: Spy,
                                                 target: tuple[str, str]) -> None:
    device, mode = target
    pretrained = tmp_path / "pretrain"
    train(_config(synthetic, pretrained, optimizer="sgd", phases=["pretrain"], device=device,
                  framework__pretrain_iterations=2, **BCP_BATCHES))
    weights = load_checkpoint(pretrained / "checkpoints/pretrain.pt")["model"]
    start = {f"student/{k}": v for k, v in weights.items() if v.is_floating_point()}
    # BCP's L_L and L_U (grad_split "source") come from two student forwards, so g_L and g_U
    # each go back through one of them; with grad_split "region" both gradients go back through
    # both forwards, what the hco steps of mean teacher and CMT do through their one forward.
    # Last, both runs with their losses compiled too (compile_losses), so that the compiled
    # losses' graphs sit between the network's (CUDA graphs on a GPU) in the compiled run.
    cases = [*((o, "source", False) for o in OPTIMIZERS), ("sgd-hco", "region", False),
             ("sgd-hco", "region", True)]
    for optimizer, split, losses in cases:
        changes: dict[str, Any] = {"init_from": str(pretrained), "framework__grad_split": split,
                                   "device": device, "compile_losses": losses, **BCP_BATCHES}
        runs = _train_twice(functools.partial(_config, synthetic, optimizer=optimizer, **changes),
                            spy, tmp_path / f"{optimizer}-{split}-{losses}", mode)
        _assert_same_training(*runs, start=start)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_compiled_mean_teacher_matches_eager(synthetic: Path, tmp_path: Path, spy: Spy,
                                             target: tuple[str, str]) -> None:
    device, mode = target
    # One labeled and one unlabeled patch: the student's batch of two shares its compiled
    # forward and backward with BCP's students above, when both run (fewer compilations).
    # The consistency term at full weight from the first step (no ramp-up), so that g_U counts.
    framework = {"name": "mean-teacher", "iterations": ITERATIONS, "lr_schedule": "constant",
                 "consistency": 1.0, "rampup_length": 0}
    changes: dict[str, Any] = {"framework": framework, "data__labeled_batch_size": 1,
                               "data__unlabeled_batch_size": 1, "device": device}
    for optimizer in OPTIMIZERS:
        runs = _train_twice(functools.partial(_config, synthetic, optimizer=optimizer, **changes),
                            spy, tmp_path / optimizer, mode)
        first, second = spy.built[-2:]  # the students of both runs, from the same seed
        assert all(torch.equal(first[k], second[k]) for k in first)
        start = {f"student/{k}": v for k, v in first.items() if v.is_floating_point()}
        _assert_same_training(*runs, start=start)

