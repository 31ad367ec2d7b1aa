"""The V-Net as it was before per-stage layouts (commit efc714f), frozen as a reference:
the default network must keep its parameters and outputs exactly."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Normalization = Literal["batchnorm", "instancenorm", "groupnorm", "none"]
GROUPNORM_GROUPS = 16  # BCP/UA-MT use GroupNorm(16, C)
# Four stride-2 stages: every input size must be a multiple of 2^4 for the skips to line up.
SIZE_MULTIPLE = 16


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
    """``stages`` x (3x3x3 conv, norm, ReLU); the first conv maps ``c_in`` to ``c_out``."""

    def __init__(self, stages: int, c_in: int, c_out: int, normalization: Normalization) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(stages):
            layers.append(nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1))
            layers.extend(_norm(normalization, c_out))
            layers.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Resample(nn.Module):
    """2x2x2 stride-2 conv (down) or transposed conv (up), then norm and ReLU."""

    def __init__(self, c_in: int, c_out: int, normalization: Normalization, *, up: bool) -> None:
        super().__init__()
        conv_type = nn.ConvTranspose3d if up else nn.Conv3d
        self.conv = nn.Sequential(
            conv_type(c_in, c_out, kernel_size=2, stride=2, padding=0),
            *_norm(normalization, c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Encoder(nn.Module):
    """Five stages; returns the feature of every scale (finest first)."""

    def __init__(self, in_channels: int, n: int, normalization: Normalization,
                 *, dropout_p: float) -> None:
        super().__init__()
        self.block_one = ConvBlock(1, in_channels, n, normalization)
        self.block_one_dw = Resample(n, 2 * n, normalization, up=False)
        self.block_two = ConvBlock(2, 2 * n, 2 * n, normalization)
        self.block_two_dw = Resample(2 * n, 4 * n, normalization, up=False)
        self.block_three = ConvBlock(3, 4 * n, 4 * n, normalization)
        self.block_three_dw = Resample(4 * n, 8 * n, normalization, up=False)
        self.block_four = ConvBlock(3, 8 * n, 8 * n, normalization)
        self.block_four_dw = Resample(8 * n, 16 * n, normalization, up=False)
        self.block_five = ConvBlock(3, 16 * n, 16 * n, normalization)
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
                 *, dropout_p: float) -> None:
        super().__init__()
        self.block_five_up = Resample(16 * n, 8 * n, normalization, up=True)
        self.block_six = ConvBlock(3, 8 * n, 8 * n, normalization)
        self.block_six_up = Resample(8 * n, 4 * n, normalization, up=True)
        self.block_seven = ConvBlock(3, 4 * n, 4 * n, normalization)
        self.block_seven_up = Resample(4 * n, 2 * n, normalization, up=True)
        self.block_eight = ConvBlock(2, 2 * n, 2 * n, normalization)
        self.block_eight_up = Resample(2 * n, n, normalization, up=True)
        self.block_nine = ConvBlock(1, n, n, normalization)
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
    """V-Net mapping (B, C, X, Y, Z) images to (B, K, X, Y, Z) logits; X, Y, Z divisible by 16."""

    def __init__(self, *, in_channels: int, num_classes: int, n_filters: int = 16,
                 normalization: Normalization = "batchnorm", dropout_p: float = 0.5) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, n_filters, normalization, dropout_p=dropout_p)
        self.decoder = Decoder(num_classes, n_filters, normalization, dropout_p=dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
