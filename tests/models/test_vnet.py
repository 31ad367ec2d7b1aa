"""V-Net: parameter count derived from PROTOCOLS 1.2, shapes, dropout, norms, memory formats."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hco_cli.models import ModelConfig
from hco_cli.models.vnet import build_model
from tests.models.reference_vnet import VNet as ReferenceVNet


def _conv(c_in: int, c_out: int, k: int) -> int:
    return k**3 * c_in * c_out + c_out


def _stage(stages: int, c_in: int, c_out: int, norm: int) -> int:
    return sum(_conv(c_in if i == 0 else c_out, c_out, 3) + norm * c_out for i in range(stages))


def expected_params(n: int, *, in_channels: int = 1, classes: int = 2, norm: int = 2) -> int:
    """Encoder 1/2/3/3/3 convs, 2x2x2 (de)convs + norm between scales, decoder 3/3/2/1, 1x1x1."""
    resample = sum(_conv(n * 2**i, n * 2 ** (i + 1), 2) + norm * n * 2 ** (i + 1)
                   for i in range(4))  # down: n->2n ... 8n->16n
    upsample = sum(_conv(n * 2 ** (i + 1), n * 2**i, 2) + norm * n * 2**i for i in range(4))
    encoder = (_stage(1, in_channels, n, norm) + _stage(2, 2 * n, 2 * n, norm)
               + _stage(3, 4 * n, 4 * n, norm) + _stage(3, 8 * n, 8 * n, norm)
               + _stage(3, 16 * n, 16 * n, norm))
    decoder = (_stage(3, 8 * n, 8 * n, norm) + _stage(3, 4 * n, 4 * n, norm)
               + _stage(2, 2 * n, 2 * n, norm) + _stage(1, n, n, norm))
    return encoder + decoder + resample + upsample + _conv(n, classes, 1)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_bcp_vnet_has_the_derived_parameter_count() -> None:
    model = build_model(ModelConfig(), in_channels=1, num_classes=2)
    assert _count(model) == expected_params(16) == 9_448_866
    assert 9.44e6 < _count(model) < 9.46e6  # PROTOCOLS 1.2: about 9.449 M without BCP's heads


def test_bcp_module_names() -> None:
    names = set(build_model(ModelConfig(), in_channels=1, num_classes=2).state_dict())
    assert "encoder.block_one.conv.0.weight" in names
    assert "encoder.block_five.conv.7.running_var" in names
    assert "decoder.block_five_up.conv.0.weight" in names
    assert "decoder.out_conv.weight" in names


@pytest.mark.parametrize("classes", [2, 3])
def test_output_shape(classes: int) -> None:
    model = build_model(ModelConfig(n_filters=4), in_channels=2, num_classes=classes)
    out = model(torch.randn(2, 2, 32, 32, 16))
    assert out.shape == (2, classes, 32, 32, 16)


def test_dropout_acts_in_train_mode_only() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_filters=4), in_channels=1, num_classes=2)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout3d)]
    assert len(drops) == 2 and all(m.p == 0.5 for m in drops)
    x = torch.randn(2, 1, 32, 32, 16)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_no_dropout_variant_is_deterministic_in_train_mode() -> None:
    model = build_model(ModelConfig(n_filters=4, dropout=False), in_channels=1, num_classes=2)
    assert not any(isinstance(m, nn.Dropout3d) for m in model.modules())
    x = torch.randn(2, 1, 32, 32, 16)
    assert torch.equal(model(x), model(x))


def test_pancreas_instancenorm_variant_has_no_norm_parameters() -> None:
    cfg = ModelConfig(normalization="instancenorm", dropout=False)
    model = build_model(cfg, in_channels=1, num_classes=2)
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not any(isinstance(m, nn.BatchNorm3d | nn.Dropout3d) for m in model.modules())
    assert _count(model) == expected_params(16, norm=0)


def test_groupnorm_needs_multiple_of_sixteen() -> None:
    with pytest.raises(ValidationError, match="multiple of 16"):
        ModelConfig(normalization="groupnorm", n_filters=8)
    with pytest.raises(ValidationError):
        ModelConfig(unknown=1)  # type: ignore[call-arg]


def test_channels_last_3d_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_filters=4), in_channels=1, num_classes=2).eval()
    x = torch.randn(2, 1, 32, 32, 16)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    out = model_cl(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_matches_float32() -> None:
    # CPU only checks the forward pass: torch's CPU bf16 Conv3d weight gradient on 2x2x1 inputs
    # is intermittently non-finite (a torch CPU kernel issue); the backward is tested on CUDA.
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_filters=4), in_channels=1, num_classes=2).eval()
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_bf16_training_step() -> None:
    torch.manual_seed(0)
    fmt = torch.channels_last_3d
    model = build_model(ModelConfig(), in_channels=1, num_classes=2).cuda()
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    x = torch.randn(2, 1, 112, 112, 80, device="cuda").to(memory_format=fmt)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 2, 112, 112, 80)
    out.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


ANISOTROPIC_STRIDES = [(2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)]
ANISOTROPIC_KERNELS = [(3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3)]


@pytest.mark.parametrize("explicit", [False, True])
def test_default_layout_is_the_reference_network_exactly(explicit: bool) -> None:
    """Same parameters (count, names, values from one seed) and outputs as the pre-layout
    V-Net, whether the layout is left unset or spelled out as 2x2x2 strides, 3x3x3 kernels."""
    torch.manual_seed(7)
    reference = ReferenceVNet(in_channels=1, num_classes=2)
    torch.manual_seed(7)
    layout = ({"strides": [(2, 2, 2)] * 4, "kernels": [(3, 3, 3)] * 5} if explicit else {})
    model = build_model(ModelConfig(**layout), in_channels=1, num_classes=2)
    assert _count(model) == _count(reference) == 9_448_866
    assert str(model) == str(reference)
    ref_state, state = reference.state_dict(), model.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    x = torch.randn(1, 1, 32, 32, 16)
    reference.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_anisotropic_layout_shapes_and_parameters() -> None:
    cfg = ModelConfig(n_filters=4, strides=ANISOTROPIC_STRIDES, kernels=ANISOTROPIC_KERNELS)
    assert cfg.size_multiples == (16, 16, 4) and not cfg.is_default_layout
    model = build_model(cfg, in_channels=1, num_classes=3)
    conv = model.encoder.block_one.conv[0]
    assert conv.kernel_size == (3, 3, 1) and conv.padding == (1, 1, 0)
    assert model.encoder.block_one_dw.conv[0].stride == (2, 2, 1)
    assert model.decoder.block_eight_up.conv[0].stride == (2, 2, 1)
    assert model.decoder.block_five_up.conv[0].stride == (2, 2, 2)
    x = torch.randn(2, 1, 32, 48, 12, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, 32, 48, 12)
    out.mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())
    # Parameters: kernels 3x3x1 at the two finest scales, 2x2x1 (de)convs between them.
    assert _count(model) < expected_params(4, classes=3)


@pytest.mark.parametrize(("layout", "message"), [
    ({"strides": [(2, 2, 2)] * 3}, "strides: expected 4"),
    ({"kernels": [(3, 3, 3)] * 4}, "kernels: expected 5"),
    ({"strides": [(2, 2, 3)] * 4}, "strides: 3 is not one of \\[1, 2\\]"),
    ({"kernels": [(3, 3, 5)] * 5}, "kernels: 5 is not one of \\[1, 3\\]"),
])
def test_invalid_layouts_are_refused(layout: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**layout)
