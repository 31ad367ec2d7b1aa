"""``compile_losses``: every framework's losses through ``torch.compile`` give the eager values
and the eager g_L and g_U, in float64 (CPU, torch's default mode).

The region split of BCP is the hard case: its two losses share both compiled loss graphs, so
each compiled backward runs twice (g_L with ``retain_graph``, then g_U), which torch's
donated buffers would refuse or corrupt (:mod:`hco_cli.models.compiling`).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

# Imported at collection, as in tests/training/test_compile_loop.py (inductor's templates and
# the locale's encoding).
import torch._inductor.compile_fx
from torch import Tensor

from hco_cli.data.batch import Batch
from hco_cli.models.compiling import compiled_function
from hco_cli.ssl import build_framework
from hco_cli.ssl.base import Framework
from hco_cli.ssl.config import (
    BCPConfig,
    CMTConfig,
    FrameworkConfig,
    MeanTeacherConfig,
    SupervisedConfig,
)
from hco_cli.ssl.losses import mix_loss, mix_loss_parts
from tests.ssl.helpers import Recorder, synthetic_batch, tiny_factory

CPU = torch.device("cpu")
CONFIGS: dict[str, FrameworkConfig] = {
    "bcp-source": BCPConfig(pretrain_iterations=2, selftrain_iterations=2),
    "bcp-region": BCPConfig(pretrain_iterations=2, selftrain_iterations=2, grad_split="region"),
    "mean-teacher": MeanTeacherConfig(iterations=2),
    "cmt": CMTConfig(epochs=1, iterations_per_epoch=2),
    "supervised": SupervisedConfig(iterations=2),
}


def _on(batch: Batch, device: torch.device) -> Batch:
    unlabeled = batch.unlabeled_image
    return Batch(batch.labeled_image.to(device), batch.labeled_label.to(device),
                 None if unlabeled is None else unlabeled.to(device))


def _run(cfg: FrameworkConfig, device: torch.device, *, compiled: bool) -> list[Any]:
    """Losses and recorded (g_L, g_U) of the first two iterations of every phase."""
    fw: Framework = build_framework(cfg, model_factory=tiny_factory(dtype=torch.float64),
                                    num_classes=2, device=device, seed=3,
                                    compile_losses=compiled)
    batches = [_on(synthetic_batch(seed, dtype=torch.float64), device) for seed in range(2)]
    out: list[Any] = []
    for phase in fw.phases():
        fw.start_phase(phase)
        recorders = {k: Recorder(list(m.parameters())) for k, m in fw.trainable().items()}
        for i in range(2):
            result = fw.train_step(phase, batches[i], recorders, i)
            out += [result.loss_l, result.loss_u, *result.extra.values()]
        for recorder in recorders.values():
            out += [[g for g in grads if g is not None]
                    for call in recorder.calls for grads in call]
    return out


# BCP's region split in the default suite (the hard case, about 25 s on two cores), the others
# in the slow tier; all of them on a GPU.
CASES = [pytest.param(name, "cpu", id=f"{name}-cpu",
                      marks=[] if name == "bcp-region" else [pytest.mark.slow])
         for name in CONFIGS]
CASES += [pytest.param(name, "cuda", id=f"{name}-cuda", marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])
    for name in CONFIGS]


@pytest.mark.parametrize(("name", "device"), CASES)
def test_compiled_losses_match_eager_in_float64(name: str, device: str) -> None:
    eager, compiled = (_run(CONFIGS[name], torch.device(device), compiled=c)
                       for c in (False, True))
    assert len(eager) == len(compiled)
    gradients = 0
    for want, got in zip(eager, compiled, strict=True):
        if isinstance(want, Tensor):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        else:  # one gradient source of one step (g_U is absent in pre-training)
            assert len(want) == len(got)
            for a, b in zip(want, got, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
            gradients += len(want)
    assert gradients > 0


def test_compile_losses_swaps_in_compiled_functions() -> None:
    """Not vacuous: the compiled run calls compiled code (torch's wrapper of the function)."""
    fw = build_framework(CONFIGS["bcp-region"], model_factory=tiny_factory(), num_classes=2,
                         device=CPU, seed=0, compile_losses=True)
    assert getattr(fw, "mix_loss_parts")._torchdynamo_orig_callable is mix_loss_parts  # noqa: B009
    plain = build_framework(CONFIGS["bcp-region"], model_factory=tiny_factory(), num_classes=2,
                            device=CPU, seed=0)
    assert getattr(plain, "mix_loss_parts") is mix_loss_parts  # noqa: B009


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_mix_loss_under_bf16_autocast() -> None:
    """As the studies train: bf16 logits under autocast, promoted to float32 inside the loss;
    compiled and eager agree to float32 rounding, value and gradient."""
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(2, 2, 32, 32, 16, device="cuda", generator=g).bfloat16()
    labels = [torch.randint(0, 2, (2, 32, 32, 16), device="cuda", generator=g) for _ in range(2)]
    region = torch.ones(2, 32, 32, 16, device="cuda")
    region[:, 8:24, 8:24, 4:12] = 0
    results = []
    for fn in (mix_loss, compiled_function(mix_loss)):
        x = logits.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(x, *labels, region, image_weight=1.0, patch_weight=0.5)
        loss.backward()
        results.append((loss.detach(), x.grad))
    (want, want_grad), (got, got_grad) = results
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad.float(), want_grad.float(), rtol=1e-2, atol=1e-6)
