"""The V-Net of UA-MT / BCP / UCMT: five encoder stages, additive skips, one 1x1x1 classifier.

Topology (PROTOCOLS 1.2): encoder stages of 1, 2, 3, 3, 3 convolutions (3x3x3 conv + norm + ReLU)
with n, 2n, 4n, 8n, 16n filters, joined by 2x2x2 stride-2 convolutions; decoder of 2x2x2
transposed convolutions whose output is *added* to the encoder feature of the same scale, then
3, 3, 2, 1 convolutions and a 1x1x1 convolution to the logits. With ``dropout``, Dropout3d(0.5)
acts on the bottleneck and before the classifier (train mode only). Module names follow BCP
(``encoder.block_one.conv.0.weight`` ...) so that its state dicts map onto ours; BCP's unused
projection/selector heads are left out (they never receive a gradient).

Per-stage layout (a plan for anisotropic data, :mod:`hco_cli.planning`): ``strides`` gives
each of the four down-samplings per axis (1 or 2; the transposed convolution of the same scale
mirrors it) and ``kernels`` each of the five scales' convolution kernel per axis (1 or 3; the
decoder stage of a scale uses that scale's kernel, as nnU-Net does). Left unset, the network
is built exactly as before (scalar kernel 3 and stride 2, the same modules in the same order,
so the same parameters from the same seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from hco_cli.models import ModelConfig
from hco_cli.models.compiling import compiled_function, prepare_compiling
from hco_cli.models.layout import (
    GROUPNORM_GROUPS,
    STAGES,
    Normalization,
    Triple,
)

# What the modules get: an int where every axis agrees (today's modules), else a triple.
_Size = int | Triple


def _size(value: Sequence[int] | None, default: int) -> _Size:
    if value is None:
        return default
    x, y, z = (int(v) for v in value)
    return x if x == y == z else (x, y, z)


def _padding(kernel: _Size) -> _Size:
    return kernel // 2 if isinstance(kernel, int) else (kernel[0] // 2, kernel[1] // 2,
                                                        kernel[2] // 2)


def _norm(kind: Normalization, channels: int) -> list[nn.Module]:
    """The normalisation layer after a convolution (none for ``"none"``)."""
    if kind == "batchnorm":
        return [nn.BatchNorm3d(channels)]
    if kind == "instancenorm":
        # affine=False, no running statistics: torch's defaults, as in BCP's Pancreas V-Net.
        return [nn.InstanceNorm3d(channels)]
    if kind == "groupnorm":
        return [nn.GroupNorm(num_groups=GROUPNORM_GROUPS, num_channels=channels)]
    return []


class ConvBlock(nn.Module):
    """``stages`` x (conv, norm, ReLU); the first conv maps ``c_in`` to ``c_out``. The kernel
    is 3x3x3 unless given per axis (1 or 3, 'same' padding)."""

    def __init__(self, stages: int, c_in: int, c_out: int, normalization: Normalization,
                 *, kernel: _Size = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(stages):
            layers.append(nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=kernel,
                                    padding=_padding(kernel)))
            layers.extend(_norm(normalization, c_out))
            layers.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Resample(nn.Module):
    """2x2x2 stride-2 conv (down) or transposed conv (up), then norm and ReLU; with a stride
    per axis, kernel = stride (an axis of stride 1 is not resampled)."""

    def __init__(self, c_in: int, c_out: int, normalization: Normalization, *, up: bool,
                 stride: _Size = 2) -> None:
        super().__init__()
        conv_type = nn.ConvTranspose3d if up else nn.Conv3d
        self.conv = nn.Sequential(
            conv_type(c_in, c_out, kernel_size=stride, stride=stride, padding=0),
            *_norm(normalization, c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Encoder(nn.Module):
    """Five stages; returns the feature of every scale (finest first)."""

    def __init__(self, in_channels: int, n: int, normalization: Normalization,
                 *, dropout_p: float, strides: Sequence[_Size] = (2,) * 4,
                 kernels: Sequence[_Size] = (3,) * STAGES) -> None:
        super().__init__()
        s, k = strides, kernels
        self.block_one = ConvBlock(1, in_channels, n, normalization, kernel=k[0])
        self.block_one_dw = Resample(n, 2 * n, normalization, up=False, stride=s[0])
        self.block_two = ConvBlock(2, 2 * n, 2 * n, normalization, kernel=k[1])
        self.block_two_dw = Resample(2 * n, 4 * n, normalization, up=False, stride=s[1])
        self.block_three = ConvBlock(3, 4 * n, 4 * n, normalization, kernel=k[2])
        self.block_three_dw = Resample(4 * n, 8 * n, normalization, up=False, stride=s[2])
        self.block_four = ConvBlock(3, 8 * n, 8 * n, normalization, kernel=k[3])
        self.block_four_dw = Resample(8 * n, 16 * n, normalization, up=False, stride=s[3])
        self.block_five = ConvBlock(3, 16 * n, 16 * n, normalization, kernel=k[4])
        self.dropout = nn.Dropout3d(p=dropout_p) if dropout_p > 0 else nn.Identity()

    def forward(self, x: Tensor) -> list[Tensor]:
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
        return [x1, x2, x3, x4, x5]


class Decoder(nn.Module):
    """Upsample, add the skip, convolve; then the 1x1x1 classifier."""

    def __init__(self, num_classes: int, n: int, normalization: Normalization,
                 *, dropout_p: float, strides: Sequence[_Size] = (2,) * 4,
                 kernels: Sequence[_Size] = (3,) * STAGES) -> None:
        super().__init__()
        s, k = strides, kernels
        self.block_five_up = Resample(16 * n, 8 * n, normalization, up=True, stride=s[3])
        self.block_six = ConvBlock(3, 8 * n, 8 * n, normalization, kernel=k[3])
        self.block_six_up = Resample(8 * n, 4 * n, normalization, up=True, stride=s[2])
        self.block_seven = ConvBlock(3, 4 * n, 4 * n, normalization, kernel=k[2])
        self.block_seven_up = Resample(4 * n, 2 * n, normalization, up=True, stride=s[1])
        self.block_eight = ConvBlock(2, 2 * n, 2 * n, normalization, kernel=k[1])
        self.block_eight_up = Resample(2 * n, n, normalization, up=True, stride=s[0])
        self.block_nine = ConvBlock(1, n, n, normalization, kernel=k[0])
        self.dropout = nn.Dropout3d(p=dropout_p) if dropout_p > 0 else nn.Identity()
        self.out_conv = nn.Conv3d(n, num_classes, kernel_size=1, padding=0)

    def forward(self, features: list[Tensor]) -> Tensor:
        x1, x2, x3, x4, x5 = features
        x = self.block_six(self.block_five_up(x5) + x4)
        x = self.block_seven(self.block_six_up(x) + x3)
        x = self.block_eight(self.block_seven_up(x) + x2)
        x = self.block_nine(self.block_eight_up(x) + x1)
        return self.out_conv(self.dropout(x))


class VNet(nn.Module):
    """V-Net mapping (B, C, X, Y, Z) images to (B, K, X, Y, Z) logits; each of X, Y, Z divisible
    by its :func:`size_multiples` (16 without per-stage strides)."""

    def __init__(self, *, in_channels: int, num_classes: int, n_filters: int = 16,
                 normalization: Normalization = "batchnorm", dropout_p: float = 0.5,
                 strides: Sequence[Sequence[int]] | None = None,
                 kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        if strides is not None and len(strides) != STAGES - 1:
            raise ValueError(f"strides: expected {STAGES - 1} stages, got {len(strides)}")
        if kernels is not None and len(kernels) != STAGES:
            raise ValueError(f"kernels: expected {STAGES} stages, got {len(kernels)}")
        s = [_size(None if strides is None else strides[i], 2) for i in range(STAGES - 1)]
        k = [_size(None if kernels is None else kernels[i], 3) for i in range(STAGES)]
        self.encoder = Encoder(in_channels, n_filters, normalization, dropout_p=dropout_p,
                               strides=s, kernels=k)
        self.decoder = Decoder(num_classes, n_filters, normalization, dropout_p=dropout_p,
                               strides=s, kernels=k)

        # Set by :func:`compile_forward`; a plain attribute, so that state dicts are unchanged
        # and a deepcopy (the EMA teacher) runs compiled too, through the same compiled code.
        self.compile_mode: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.compile_mode is not None and not torch.compiler.is_compiling():
            return _compiled(self.compile_mode)(self, x)
        return self.decoder(self.encoder(x))


def _compiled(mode: str) -> Callable[[VNet, Tensor], Tensor]:
    """One ``torch.compile`` of :meth:`VNet.forward` per mode, shared by every V-Net: the
    network is an argument, so a student and its teacher share compiled code (their
    parameters are inputs of the graph, not constants).

    The options (:mod:`hco_cli.models.compiling`): no in-place buffers, for the hierarchical
    optimizers' two gradients through one forward and torch's compile cache, and:

    ``fallback_random`` on: dropout draws its masks through torch's own kernels, as eager does,
    rather than through random numbers generated inside inductor's kernels. A compiled run then
    drops what the eager run of its seed drops (the two runs differ by rounding alone, which is
    what makes a compiled run checkable against an eager one, with dropout, as
    tests/training/test_compile_loop.py does), and under CUDA graphs the masks come from
    torch's graph-safe generator instead of the compiler's own random-state handling, which
    short LA runs with CUDA graphs and inductor's random numbers ended 2.3 Dice points below
    eager (results/speed/numerics-round2-h200). The V-Net has two dropout layers, so the
    unfused masks cost little."""
    return compiled_function(VNet.forward, mode)


def compile_forward(model: nn.Module, mode: str = "default") -> nn.Module:
    """Run ``model``'s forward through ``torch.compile`` (``mode``: torch's; "default",
    "reduce-overhead" for CUDA graphs, "max-autotune-no-cudagraphs"). Only V-Nets."""
    if not isinstance(model, VNet):
        raise TypeError(f"compile_forward takes a VNet, not {type(model).__name__}")
    model.compile_mode = mode
    prepare_compiling()  # two gradients through one forward; one function, many variants
    return model


def build_model(cfg: ModelConfig, *, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialised network (PyTorch default initialisation, as BCP)."""
    return VNet(in_channels=in_channels, num_classes=num_classes, n_filters=cfg.n_filters,
                normalization=cfg.normalization, dropout_p=cfg.dropout_p if cfg.dropout else 0.0,
                strides=cfg.strides, kernels=cfg.kernels)
