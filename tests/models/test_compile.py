"""``compile: true``: the compiled V-Net computes what the eager one does, its copies (the EMA
teacher) run their own parameters, and the config accepts only torch's modes."""

from __future__ import annotations

import copy

import pytest
import torch

# Imported at collection: inductor reads its kernel templates with the locale's encoding, and
# later in a full run something leaves an ASCII locale behind (UnicodeDecodeError there).
import torch._inductor.compile_fx

from hco_cli.config import validate_config
from hco_cli.errors import ConfigError
from hco_cli.models import ModelConfig
from hco_cli.models.vnet import build_model, compile_forward


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # float64: BatchNorm over the few bottleneck voxels of a tiny input amplifies float32
    # rounding (the compiled reductions sum in another order) to 1e-3; in float64 it stays ~1e-12.
    return build_model(ModelConfig(n_filters=2, dropout=False), in_channels=1,
                       num_classes=2).double()


@pytest.mark.slow
def test_compiled_forward_and_backward_match_eager() -> None:
    """Train mode (BatchNorm batch statistics and running-statistics updates), one compile."""
    eager, compiled = _net(0), compile_forward(_net(0))
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    want, got = eager(x), compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    want.square().sum().backward()
    got.square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-10)
    for a, b in zip(eager.buffers(), compiled.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    # A deepcopy (how the EMA teacher is made) runs compiled, with its own parameters.
    teacher = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
    assert teacher.compile_mode == "default"  # type: ignore[union-attr]
    eager.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(teacher(x), eager(x), rtol=1e-9, atol=1e-10)
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_compile_config_accepts_only_torch_modes() -> None:
    base = {"data": {"path": "data/x", "patch_size": [16, 16, 16]},
            "framework": {"name": "supervised"}, "optimizer": {"name": "sgd"}}
    assert validate_config(base).compile is False
    assert validate_config({**base, "compile": True}).compile is True
    assert validate_config({**base, "compile": "reduce-overhead"}).compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="compile"):
        validate_config({**base, "compile": "fastest"})
    with pytest.raises(TypeError, match="VNet"):
        compile_forward(torch.nn.Conv3d(1, 1, 1))
