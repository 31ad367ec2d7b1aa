"""Analytic FLOPs and bytes: a hand-computed convolution pair, and torch's own FLOP counter on
a V-Net (which counts convolutions as 2 x multiply-adds, as we do)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hco_cli.models import ModelConfig
from hco_cli.models.roofline import Cost, bcp_iteration_cost, forward_cost, layer_costs
from hco_cli.models.vnet import build_model


def test_hand_computed_convolutions() -> None:
    net = nn.Sequential(nn.Conv3d(2, 3, kernel_size=3, padding=1),
                        nn.ConvTranspose3d(3, 2, kernel_size=2, stride=2), nn.ReLU())
    costs = layer_costs(net, (1, 2, 4, 4, 4), activation_bytes=2)
    # conv: 2 x (1 x 3 x 4^3 outputs) x (2 x 27 inputs each) = 20736
    assert costs["0"].flops == 2 * 3 * 64 * 2 * 27 == 20736
    # transposed: each of the 3 x 4^3 inputs feeds 2 x 2^3 outputs: 2 x 192 x 16 = 6144
    assert costs["1"].flops == 2 * 3 * 64 * 2 * 8 == 6144
    assert costs["2"].flops == 0
    # bytes: input + output in bf16, weights and biases in float32
    assert costs["0"].bytes == (2 * 64 + 3 * 64) * 2 + (3 * 2 * 27 + 3) * 4
    assert costs["1"].bytes == (3 * 64 + 2 * 512) * 2 + (3 * 2 * 8 + 2) * 4
    assert costs["2"].bytes == (2 * 512 + 2 * 512) * 2


def test_vnet_flops_equal_torch_flop_counter() -> None:
    model = build_model(ModelConfig(n_filters=4), in_channels=1, num_classes=2).eval()
    x = torch.zeros(2, 1, 32, 32, 16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert forward_cost(model, tuple(x.shape)).flops == counter.get_total_flops()


def test_iteration_and_roofline() -> None:
    model = build_model(ModelConfig(n_filters=4), in_channels=1, num_classes=2)
    one = forward_cost(model, (1, 1, 32, 32, 16))
    four = forward_cost(model, (4, 1, 32, 32, 16))
    assert four.flops == pytest.approx(4 * one.flops)
    selftrain = bcp_iteration_cost(model, (32, 32, 16))
    assert selftrain.flops == pytest.approx(4 * one.flops + 3 * 4 * one.flops)
    assert bcp_iteration_cost(model, (32, 32, 16), phase="pretrain").flops == pytest.approx(
        3 * 2 * one.flops)
    cost = Cost(flops=2e12, bytes=1e12)
    assert cost.roofline_seconds(flops_per_s=1e15, bytes_per_s=1e12) == 1.0
    assert cost.roofline_seconds(flops_per_s=1e12, bytes_per_s=1e15) == 2.0
