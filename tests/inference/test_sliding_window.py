"""Sliding window against a brute-force float64 reference written from BCP's description."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hco_cli.inference.sliding_window import logits_of, predict_volume, window_starts


class TinyNet(nn.Module):
    """Conv with zero padding: border effects make overlapping windows disagree, as real nets."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, classes, 3, padding=1)
        self.drop = nn.Dropout(0.5)  # must be off: predict_volume runs in eval mode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.drop(self.conv(x)), x


def brute_force(model: nn.Module, image: np.ndarray, patch, stride) -> np.ndarray:
    """One window at a time, float64 accumulation, explicit loops (BCP test_single_case)."""
    _c, *shape = image.shape
    pads = [max(p - d, 0) for d, p in zip(shape, patch, strict=False)]
    padded = np.pad(image, [(0, 0)] + [(p // 2, p - p // 2) for p in pads])
    size = padded.shape[1:]
    n = [math.ceil((s - p) / st) + 1 for s, p, st in zip(size, patch, stride, strict=False)]
    score, cnt = None, np.zeros(size)
    model.eval()
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                xs = min(stride[0] * i, size[0] - patch[0])
                ys = min(stride[1] * j, size[1] - patch[1])
                zs = min(stride[2] * k, size[2] - patch[2])
                win = padded[:, xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]]
                with torch.no_grad():
                    out = model(torch.from_numpy(win[None]).float())[0][0].double()
                prob = torch.softmax(out, 0).numpy()
                if score is None:
                    score = np.zeros((prob.shape[0], *size))
                score[:, xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += prob
                cnt[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += 1
    score /= cnt
    return score[:, pads[0] // 2:pads[0] // 2 + shape[0], pads[1] // 2:pads[1] // 2 + shape[1],
                 pads[2] // 2:pads[2] // 2 + shape[2]]


@pytest.mark.parametrize(
    ("shape", "patch", "stride", "batch"),
    [((13, 11, 9), (6, 5, 4), (3, 3, 2), 4), ((5, 11, 3), (6, 5, 4), (2, 4, 1), 3),
     ((6, 5, 4), (6, 5, 4), (2, 2, 2), 1)],
)
def test_matches_brute_force(shape, patch, stride, batch):
    model = TinyNet()
    image = np.random.default_rng(1).normal(size=(1, *shape))
    got = predict_volume(model, torch.from_numpy(image).float(), patch_size=patch, stride=stride,
                         num_classes=3, batch_size=batch)
    assert model.training  # the previous mode is restored
    want = brute_force(model, image, patch, stride)
    assert got.shape == (3, *shape) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got.sum(0).numpy(), 1.0, atol=1e-5)


def test_window_starts_are_clamped():
    assert window_starts(190, 112, 18) == [0, 18, 36, 54, 72, 78]
    assert window_starts(88, 80, 4) == [0, 4, 8]
    assert window_starts(80, 80, 4) == [0]


def test_logits_of_accepts_common_outputs():
    t = torch.zeros(1)
    assert logits_of(t) is t and logits_of((t, 1)) is t and logits_of({"out": t}) is t
    with pytest.raises(TypeError):
        logits_of("nope")
