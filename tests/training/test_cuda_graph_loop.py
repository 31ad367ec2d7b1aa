"""CUDA graphs against the same compiled code without them, in a study's own arithmetic.

Three numerics rounds on Left Atrium (results/speed/README.md) ended the CUDA-graph runs
(``compile: reduce-overhead``) below the eager ones on 5 of 6 seeds and below compiled code
without graphs (``compile: true``) on 6 of 6, while tests/training/test_compile_loop.py finds
the graph path equal to eager in float64 over 4 iterations. Between eager and compiled code a
longer run cannot be checked: their kernels round differently and training amplifies that. But
CUDA graphs replay the kernels that ``compile: true`` launches one by one, so with deterministic
kernels the two runs must end bit for bit alike, however long, in bf16 autocast and channels-last
as the studies train: pre-training and self-training compiled, dropout, validation, the learning
rate's decay, sgd-hco's two gradients. A run compiled without graphs is first repeated, which
shows that the runs are deterministic (else the comparison could not fail on a fault alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

# Imported at collection, as in tests/training/test_compile_loop.py (inductor's templates and
# the locale's encoding).
import torch._inductor.compile_fx

from hco_cli.config import TrainConfig
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.training.entry import train
from hco_cli.training.logging import read_metrics
from tests.training.test_compile_loop import _networks
from tests.training.test_loop import tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PRETRAIN, SELFTRAIN = 20, 60


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=8, val=1, test=0, shape=(40, 40, 24))
    return out


def _config(data: Path, run: Path, compiled: str | bool) -> TrainConfig:
    """BCP with sgd-hco, pre-training and self-training, as a study trains (bf16, channels
    last, dropout, validation, a learning-rate decay), cuDNN deterministic."""
    framework = {"name": "bcp", "pretrain_iterations": PRETRAIN,
                 "selftrain_iterations": SELFTRAIN, "lr_decay_every": SELFTRAIN // 2}
    return tiny_config(data, run, data__patch_size=[32, 32, 16], data__labeled_batch_size=4,
                       data__unlabeled_batch_size=4, model__n_filters=8, model__dropout=True,
                       framework=framework, validation__every=20, log_every=1,
                       checkpoint_every=SELFTRAIN, device="cuda", amp=True, channels_last=True,
                       deterministic=True, compile=compiled,
                       optimizer={"name": "sgd-hco", "lr": 0.01, "momentum": 0.9})


def _differing(a: Path, b: Path) -> list[str]:
    """The network tensors (student, EMA teacher, BatchNorm statistics) in which two runs' final
    checkpoints differ at all."""
    want, got = _networks(a), _networks(b)
    assert want.keys() == got.keys()
    return [key for key, value in want.items() if not torch.equal(value, got[key])]


def _first_divergence(a: Path, b: Path) -> str:
    """Where two runs' logged losses first differ, for the failure message."""
    rows = [[(r["phase"], r["iter"], r.get("loss_l"), r.get("loss_u"))
             for r in read_metrics(run / "metrics.jsonl")] for run in (a, b)]
    for x, y in zip(*rows, strict=False):
        if x != y:
            return f"first differing log row: {x} vs {y}"
    return "logged losses equal"


@pytest.fixture
def deterministic() -> Any:
    """Torch's deterministic algorithms (inductor then avoids atomics), warning rather than
    failing on an op without one (cuBLAS without its workspace setting)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.usefixtures("deterministic")
def test_cuda_graphs_train_as_compiled_code_without_them(synthetic: Path,
                                                         tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("compiled", "compiled-again", "graphs")}
    train(_config(synthetic, runs["compiled"], True))
    train(_config(synthetic, runs["compiled-again"], True))
    repeat = _differing(runs["compiled"], runs["compiled-again"])
    assert not repeat, ("compiled runs are not deterministic here", repeat[:3],
                        _first_divergence(runs["compiled"], runs["compiled-again"]))
    train(_config(synthetic, runs["graphs"], "reduce-overhead"))
    graphs = _differing(runs["compiled"], runs["graphs"])
    assert not graphs, ("CUDA graphs trained otherwise", graphs[:3],
                        _first_divergence(runs["compiled"], runs["graphs"]))
    # Not vacuous: the runs moved the weights and logged every step.
    steps = [r for r in read_metrics(runs["graphs"] / "metrics.jsonl") if r["phase"] != "val"]
    assert len(steps) >= PRETRAIN + SELFTRAIN
