"""Sliding window against a brute-force float64 reference written from BCP's description."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hco_cli.inference.sliding_window import (
    logits_of,
    mirror_sets,
    predict_volume,
    predict_volumes,
    window_starts,
)


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


class Mirrored(nn.Module):
    """``model`` applied to the input flipped along ``axes`` (spatial), its logits flipped back:
    the manual mirrored copy of a network."""

    def __init__(self, model: nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.dims = model, [a + 2 for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return logits_of(self.model(x))
        return torch.flip(logits_of(self.model(torch.flip(x, self.dims))), self.dims)


def _volume(model, image, **kwargs):
    return predict_volume(model, image, patch_size=(6, 5, 4), stride=(3, 3, 2), num_classes=3,
                          batch_size=3, **kwargs)


def test_ensemble_equals_the_average_of_each_networks_map():
    image = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 13, 11, 9))).float()
    first, second = TinyNet(), TinyNet()
    with torch.no_grad():
        second.conv.weight.mul_(-2.0)
    both = _volume([first, second], image)
    manual = (_volume(first, image).double() + _volume(second, image).double()) / 2
    assert first.training and second.training  # both modes restored
    np.testing.assert_allclose(both.double().numpy(), manual.numpy(), rtol=0, atol=1e-6)
    assert float((both - _volume(first, image)).abs().max()) > 0.05  # the second one counts


def test_mirroring_equals_the_manual_mirrored_average():
    image = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 13, 11, 9))).float()
    model = TinyNet()
    got = _volume(model, image, mirror_axes=(0, 1, 2))
    subsets = mirror_sets((0, 1, 2))
    assert len(subsets) == 8 and subsets[0] == () and subsets[-1] == (0, 1, 2)
    manual = sum(_volume(Mirrored(model, axes), image).double() for axes in subsets) / 8
    np.testing.assert_allclose(got.double().numpy(), manual.numpy(), rtol=0, atol=1e-6)
    assert float((got - _volume(model, image)).abs().max()) > 1e-3  # mirroring changes it
    np.testing.assert_allclose(got.sum(0).numpy(), 1.0, atol=1e-5)


def test_mirroring_one_window_equals_flipping_the_volume():
    """A volume of exactly one patch: each mirrored window is the mirrored volume."""
    image = torch.from_numpy(np.random.default_rng(4).normal(size=(1, 6, 5, 4))).float()
    model = TinyNet()
    got = _volume(model, image, mirror_axes=(1,))
    flipped = torch.flip(_volume(model, torch.flip(image, [2])), [2])  # y: dim 2 of both
    manual = (_volume(model, image).double() + flipped.double()) / 2
    np.testing.assert_allclose(got.double().numpy(), manual.numpy(), rtol=0, atol=1e-6)


def test_stitching_device_and_progress():
    image = torch.from_numpy(np.random.default_rng(5).normal(size=(1, 13, 11, 9))).float()
    calls: list[tuple[int, int]] = []
    cpu = torch.device("cpu")
    got = _volume(TinyNet(), image, device=cpu, stitch_device=cpu,
                  progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(got.numpy(), _volume(TinyNet(), image).numpy())
    windows = 4 * 3 * 4  # ceil((13-6)/3)+1 x ceil((11-5)/3)+1 x ceil((9-4)/2)+1
    assert calls == [(min(n, windows), windows) for n in range(3, windows + 3, 3)]


def test_mirror_axes_are_checked():
    with pytest.raises(ValueError, match="distinct values of 0, 1, 2"):
        mirror_sets((0, 3))
    with pytest.raises(ValueError, match="distinct"):
        mirror_sets((1, 1))


class BatchRecorder(TinyNet):
    """TinyNet that notes the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize("mirror_axes", [(), (0, 2)])
def test_full_batches_pad_the_last_batch_and_change_nothing(mirror_axes):
    # 5 x 4 x 4 = 80 windows in batches of 7: 11 full batches and a remainder of 3
    image = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 13, 11, 9)))
    patch, stride = (6, 5, 4), (2, 2, 2)
    plain, full = BatchRecorder().double(), BatchRecorder().double()
    expected = predict_volume(plain, image, patch_size=patch, stride=stride, num_classes=3,
                              batch_size=7, mirror_axes=mirror_axes)
    got = predict_volume(full, image, patch_size=patch, stride=stride, num_classes=3,
                         batch_size=7, mirror_axes=mirror_axes, full_batches=True)
    calls = len(mirror_sets(mirror_axes))
    assert [len(window_starts(s, p, st)) for s, p, st in zip((13, 11, 9), patch, stride,
                                                             strict=True)] == [5, 4, 4]
    assert plain.batches == [7] * (11 * calls) + [3] * calls
    assert full.batches == [7] * (12 * calls)
    # per window the same float64 network: the zero windows' outputs are dropped. The map is
    # float32, and a CPU may pick another float64 convolution kernel for a batch of 3 than of
    # 7 (oneDNN on AMX CPUs does), which can move a probability by one float32 ulp (<= 2**-23)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=2.0**-23)
    if not mirror_axes:  # and BCP's window-by-window map (a float32 twin of the network)
        reference = brute_force(TinyNet(), image.numpy(), patch, stride)
        np.testing.assert_allclose(got.numpy(), reference, rtol=0, atol=2e-6)


def test_stream_across_volumes_gives_each_volume_its_own_map():
    # three volumes, one smaller than the patch (padded), windows 48 + 3 + 6 in batches of 5:
    # batches cross volume borders, and each map equals the volume predicted alone, bit for bit
    rng = np.random.default_rng(11)
    shapes = [(13, 11, 9), (5, 11, 3), (8, 5, 7)]
    images = [torch.from_numpy(rng.normal(size=(1, *s))) for s in shapes]
    patch, stride = (6, 5, 4), (3, 3, 2)
    net = BatchRecorder().double()
    net.train()
    calls: list[tuple[int, int]] = []
    streamed = list(predict_volumes(net, images, patch_size=patch, stride=stride, num_classes=3,
                                    batch_size=5, full_batches=True,
                                    progress=lambda done, total: calls.append((done, total))))
    assert net.training  # the mode is given back
    windows = [math.prod(len(window_starts(max(d, p), p, st))
                         for d, p, st in zip(s, patch, stride, strict=True)) for s in shapes]
    assert windows == [48, 3, 6]
    total = sum(windows)
    assert net.batches == [5] * math.ceil(total / 5)  # only the stream's last batch is padded
    assert calls == [(min(n, total), total) for n in range(5, total + 5, 5)]
    assert [tuple(p.shape) for p in streamed] == [(3, *s) for s in shapes]
    for image, got in zip(images, streamed, strict=True):
        alone = predict_volume(TinyNet().double(), image, patch_size=patch, stride=stride,
                               num_classes=3, batch_size=5, full_batches=True)
        # float64: a CPU convolution's window may round differently in another batch (float32
        # differs by an ulp here); on the GPU benchmarks/validation_stream.py checks bit equality
        torch.testing.assert_close(got, alone, rtol=0, atol=1e-12)
        reference = brute_force(TinyNet(), image.numpy(), patch, stride)
        np.testing.assert_allclose(got.numpy(), reference, rtol=0, atol=2e-6)


def test_stream_yields_each_volume_when_its_last_window_is_done():
    # a consumer sees volume 0 before volume 1's later windows run: maps are not all held
    images = [torch.zeros(1, 6, 5, 4), torch.zeros(1, 12, 5, 4)]
    net = BatchRecorder()
    stream = predict_volumes(net, images, patch_size=(6, 5, 4), stride=(2, 5, 4),
                             num_classes=3, batch_size=2)
    first = next(stream)
    assert first.shape == (3, 6, 5, 4)
    assert net.batches == [2]  # volume 0's one window and volume 1's first
    rest = list(stream)
    assert len(rest) == 1 and net.batches == [2, 2, 1]
    assert list(predict_volumes(net, [], patch_size=(6, 5, 4), stride=2, num_classes=3)) == []
