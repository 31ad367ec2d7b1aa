"""UCMT's strong views (scipy-equal Gaussian blur) and the UMIX block swap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from hco_cli.ssl.common import FrameworkRng
from hco_cli.ssl.umix import (
    block_order,
    check_divisible,
    gaussian_blur,
    mean_entropy,
    strong_view,
    umix,
)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_equals_scipy(sigma: float) -> None:
    volume = np.random.default_rng(0).random((9, 12, 10))
    got = gaussian_blur(torch.from_numpy(volume)[None, None], sigma)[0, 0].numpy()
    np.testing.assert_allclose(got, ndimage.gaussian_filter(volume, sigma), rtol=1e-12,
                               atol=1e-12)


def test_strong_view_blurs_some_samples_reproducibly() -> None:
    images = torch.rand(16, 1, 8, 8, 8, dtype=torch.float64)
    a = strong_view(images, FrameworkRng(1, torch.device("cpu")), p=0.8, sigma_min=0.5,
                    sigma_max=1.5)
    b = strong_view(images, FrameworkRng(1, torch.device("cpu")), p=0.8, sigma_min=0.5,
                    sigma_max=1.5)
    assert torch.equal(a, b)
    unchanged = [torch.equal(x, y) for x, y in zip(a, images, strict=True)]
    assert 0 < sum(unchanged) < 16  # p = 0.8: most, not all, samples are blurred
    none = strong_view(images, FrameworkRng(1, torch.device("cpu")), p=0.0, sigma_min=0.5,
                       sigma_max=1.5)
    assert torch.equal(none, images)


def _blocks_reference(t: np.ndarray, n: int | tuple[int, int, int]) -> list[np.ndarray]:
    """Blocks of one (C, X, Y, Z) sample in raster order, as UCMT's unfold enumerates them."""
    nx, ny, nz = (n, n, n) if isinstance(n, int) else n
    x, y, z = t.shape[1:]
    bx, by, bz = x // nx, y // ny, z // nz
    return [t[:, i * bx:(i + 1) * bx, j * by:(j + 1) * by, k * bz:(k + 1) * bz].copy()
            for i in range(nx) for j in range(ny) for k in range(nz)]


@pytest.mark.parametrize(("n", "shape"), [(4, (8, 8, 4)), ((4, 4, 3), (8, 8, 6)),
                                          ((2, 4, 6), (8, 8, 12))])
def test_umix_swaps_blocks_like_ucmt(n: int | tuple[int, int, int],
                                     shape: tuple[int, int, int]) -> None:
    """Cubic blocks as UCMT; per-axis blocks (anisotropic patches) by the same rule."""
    k = 2
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    label = torch.randint(0, 3, (2, 1, *shape), generator=g)
    unc1 = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    unc2 = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    mixed_image, mixed_label = umix([image, label], unc1, unc2, topk=k, blocks_per_axis=n)
    for i in range(2):
        means1 = [b.mean() for b in _blocks_reference(unc1[i].numpy(), n)]
        means2 = [b.mean() for b in _blocks_reference(unc2[i].numpy(), n)]
        order1 = np.argsort(-np.array(means1), kind="stable")
        order2 = np.argsort(-np.array(means2), kind="stable")
        for source, mixed in ((image, mixed_image), (label, mixed_label)):
            blocks = _blocks_reference(source[i].numpy(), n)
            new = list(blocks)
            # Each assignment gathers its sources first (torch's a[i] = a[j]); the second
            # reads the result of the first.
            for dsts, srcs in ((order1[:k], order2[-k:]), (order2[:k], order1[-k:])):
                before = [b.copy() for b in new]
                for dst, src in zip(dsts, srcs, strict=True):
                    new[dst] = before[src]
            got = _blocks_reference(mixed[i].numpy(), n)
            for a, b in zip(got, new, strict=True):
                np.testing.assert_array_equal(a, b)
    assert not torch.equal(mixed_image, image)


def test_block_order_and_entropy() -> None:
    unc = torch.zeros(1, 1, 4, 4, 4)
    unc[0, 0, 2:4, 0:2, 2:4] = 1.0  # block (1, 0, 1) -> raster index 1*4 + 0*2 + 1 = 5
    assert int(block_order(unc, 2)[0, 0]) == 5
    assert int(block_order(unc, (2, 2, 2))[0, 0]) == 5
    assert int(block_order(unc, (2, 1, 2))[0, 0]) == 3  # (1, 0, 1) -> 1*2 + 0*2 + 1
    assert check_divisible((64, 64, 12), (8, 8, 6)) and not check_divisible((64, 64, 12), 8)
    p = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1, 1)
    q = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1)
    mean = torch.tensor([0.75, 0.25])
    expected = -float((mean * torch.log(mean + 1e-6)).sum())
    assert float(mean_entropy(p, q)) == pytest.approx(expected, rel=1e-6)
