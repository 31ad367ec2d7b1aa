"""FLOPs and memory traffic of a network's layers, and the roofline time they imply.

Counted analytically from the shapes a forward pass produces (run on the ``meta`` device, so
nothing is computed): a convolution costs 2 x (multiply-adds) = 2 N C_out prod(out) C_in/g
prod(k); a transposed convolution 2 N C_in prod(in) C_out/g prod(k). Other layers (norms,
activations, dropout) count as memory traffic only. Bytes assume every layer reads its input
and writes its output once in the activation dtype (no fusion across layers, no re-reads)
plus its float32 parameters: an estimate of unfused traffic, not a bound. A backward pass is
taken as twice the forward's FLOPs (input and weight gradients) and bytes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# NVIDIA H200 SXM, datasheet: dense bf16 tensor-core FLOP/s (no sparsity) and HBM3e bandwidth.
H200_BF16_FLOPS = 989e12
H200_HBM_BYTES = 4.8e12


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of some work."""

    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, factor: float) -> Cost:
        return Cost(self.flops * factor, self.bytes * factor)

    def roofline_seconds(self, *, flops_per_s: float = H200_BF16_FLOPS,
                         bytes_per_s: float = H200_HBM_BYTES) -> float:
        """The time neither compute nor memory bandwidth could beat: max of the two."""
        return max(self.flops / flops_per_s, self.bytes / bytes_per_s)


def conv_flops(module: nn.Module, x: Tensor, y: Tensor) -> float:
    """2 x multiply-adds of a (transposed) convolution from input ``x`` to output ``y``."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return 2.0 * x.shape[0] * x.shape[1] * math.prod(x.shape[2:]) * per_input
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return 2.0 * y.shape[0] * y.shape[1] * math.prod(y.shape[2:]) * per_output
    return 0.0


def layer_costs(model: nn.Module, input_shape: Sequence[int], *,
                activation_bytes: int = 2) -> dict[str, Cost]:
    """Forward cost of every leaf module of ``model`` on an input of ``input_shape``."""
    meta = copy.deepcopy(model).to("meta")
    if hasattr(meta, "compile_mode"):
        setattr(meta, "compile_mode", None)  # noqa: B010 (count the eager graph)
    costs: dict[str, Cost] = {}

    def record(name: str, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        params = sum(p.numel() for p in module.parameters(recurse=False))
        moved = (x.numel() + output.numel()) * activation_bytes + 4 * params
        costs[name] = costs.get(name, Cost(0, 0)) + Cost(conv_flops(module, x, output), moved)

    handles = [m.register_forward_hook(
        lambda mod, inp, out, name=name: record(name, mod, inp, out))
        for name, m in meta.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(*input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return costs


def forward_cost(model: nn.Module, input_shape: Sequence[int], *,
                 activation_bytes: int = 2) -> Cost:
    """The sum of :func:`layer_costs`."""
    total = Cost(0, 0)
    for cost in layer_costs(model, input_shape, activation_bytes=activation_bytes).values():
        total = total + cost
    return total


def bcp_iteration_cost(model: nn.Module, patch: Sequence[int], *, labeled: int = 4,
                       unlabeled: int = 4, channels: int = 1, phase: str = "selftrain",
                       activation_bytes: int = 2) -> Cost:
    """Network FLOPs and bytes of one BCP iteration (losses, LCC and optimizer left out).

    Pre-training: the student's forward and backward on the labeled half pasted into the
    other (``labeled / 2`` volumes). Self-training: the teacher's forward on the unlabeled
    batch, then the student's forward and backward on the two mixed batches
    (``labeled / 2 + unlabeled / 2`` volumes).
    """
    def one(n: int) -> Cost:
        return forward_cost(model, (n, channels, *patch), activation_bytes=activation_bytes)

    if phase == "pretrain":
        return one(labeled // 2) * 3
    return one(unlabeled) + one(labeled // 2 + unlabeled // 2) * 3
