"""Labels and largest components made on the device (``hco predict``'s pipelined path) are
the host path's, mask for mask: real Left Atrium labels, synthetic ties, several classes.

No SimpleITK here: the GPU image lacks it, and the GPU tests of this module run there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from hco_cli.inference.cases import Window, device_labels, labels_of
from hco_cli.ops.components import keep_largest_per_class, lcc_torch

RANK = {6: 1, 18: 2, 26: 3}


def scipy_lcc(volume: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """BCP's getLargestCC: scipy labels, argmax of the histogram without background."""
    labels, count = ndimage.label(volume, ndimage.generate_binary_structure(3, RANK[connectivity]))
    if count == 0:
        return np.zeros_like(volume, dtype=bool)
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def perturbed_la_masks(root: Path, count: int) -> list[np.ndarray]:
    """Real LA labels with salt-and-pepper noise near the atrium: many components, one big."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    masks = []
    for folder in sorted((root / "2018LA_Seg_Training Set").iterdir())[:count]:
        with h5py.File(folder / "mri_norm2.h5", "r") as f:
            label = np.asarray(f["label"][:], dtype=bool)
        shell = ndimage.binary_dilation(label, iterations=3) & ~ndimage.binary_erosion(
            label, iterations=3)
        flips = shell & (rng.random(label.shape) < 0.3)
        masks.append(label ^ flips)
    return masks


def test_torch_components_equal_scipy_on_real_la_labels(la_unpacked: Path) -> None:
    for mask in perturbed_la_masks(la_unpacked, 2):
        assert ndimage.label(mask)[1] > 10  # the noise made many components
        got = lcc_torch(torch.from_numpy(mask)[None])[0].numpy()
        np.testing.assert_array_equal(got, scipy_lcc(mask))


def _probabilities(seed: int, classes: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """Smooth random probabilities: several blobs per class, some touching the borders."""
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(classes, *shape)), (0, 1.5, 1.5, 1.5))
    return torch.softmax(torch.from_numpy(logits * 8).float(), dim=0)


def _tie(shape: tuple[int, int, int]) -> torch.Tensor:
    """Two foreground cubes of equal size: the raster-first must win."""
    probs = torch.zeros(2, *shape)
    probs[0] = 1
    probs[:, -3:, -3:, -3:] = torch.tensor([0.0, 1.0])[:, None, None, None]
    probs[:, 1:4, 1:4, 1:4] = torch.tensor([0.0, 1.0])[:, None, None, None]
    return probs


def _cases() -> list[torch.Tensor]:
    return [_probabilities(1, 2, (24, 20, 16)), _probabilities(2, 4, (24, 20, 16)),
            _tie((12, 12, 12))]


@pytest.mark.parametrize("lcc", [False, True])
def test_device_labels_equal_host_labels_on_the_cpu(lcc: bool) -> None:
    for probs in _cases():
        window = Window(patch_size=(8, 8, 8), stride=(4, 4, 4), num_classes=probs.shape[0],
                        lcc=lcc)
        got, want = device_labels(probs, window), labels_of(probs, window)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lcc", [False, True])
def test_device_labels_on_the_gpu_equal_host_labels(lcc: bool) -> None:
    for probs in _cases():
        window = Window(patch_size=(8, 8, 8), stride=(4, 4, 4), num_classes=probs.shape[0],
                        lcc=lcc)
        np.testing.assert_array_equal(device_labels(probs.cuda(), window),
                                      labels_of(probs, window))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_components_equal_scipy_on_real_la_labels(la_unpacked: Path) -> None:
    """Through the GPU's own path (CuPy where installed) and the pure-torch fallback."""
    for mask in perturbed_la_masks(la_unpacked, 4):
        want = scipy_lcc(mask)
        labels = torch.from_numpy(mask.astype(np.int64)).cuda()
        np.testing.assert_array_equal(keep_largest_per_class(labels, 2).cpu().numpy() == 1, want)
        np.testing.assert_array_equal(lcc_torch(labels.bool()[None])[0].cpu().numpy(), want)
