"""Where the probability map is stitched: the memory estimate and the auto rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from hco_cli.inference.cases import Window, case_probabilities
from hco_cli.inference.stitching import GPU_SHARE, map_bytes, peak_mib, reset_peak, stitch_device

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)  # a device object only: nothing is allocated on it


def test_map_bytes_counts_padded_map_counts_image_and_labels() -> None:
    # padded 112 x 112 x 80 (z padded from 60), 1 channel + 2 classes + counts, int64 labels
    assert map_bytes((100, 112, 60), patch=(112, 112, 80), channels=1, num_classes=2) == (
        112 * 112 * 80 * 4 * 4 + 100 * 112 * 60 * 8)
    ct = map_bytes((512, 512, 300), patch=(96, 96, 96), channels=1, num_classes=14)
    assert round(ct / 1e9, 2) == 5.66  # the module docstring's 14-class CT


def test_auto_stitches_on_the_gpu_only_where_the_map_fits_half_its_free_memory() -> None:
    free = 8 * 2**30
    assert stitch_device("auto", GPU, needed=int(GPU_SHARE * free), free=free) == GPU
    assert stitch_device("auto", GPU, needed=int(GPU_SHARE * free) + 1, free=free) == CPU
    assert stitch_device("gpu", GPU, needed=10 * free, free=free) == GPU
    assert stitch_device("cpu", GPU, needed=1, free=free) == CPU
    assert stitch_device("auto", CPU, needed=1) == CPU


def test_no_peak_memory_on_the_cpu() -> None:
    assert peak_mib(CPU) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_stitching_equals_gpu_stitching_and_peak_memory_is_measured() -> None:
    torch.manual_seed(0)
    model = nn.Conv3d(1, 3, 3, padding=1).cuda()
    image = torch.randn(1, 40, 36, 20)
    window = Window(patch_size=(16, 16, 16), stride=(8, 8, 8), num_classes=3, stitch="gpu")
    reset_peak(GPU)
    on_gpu, where = case_probabilities(model, image.numpy(), window, device=GPU)
    peak = peak_mib(GPU)
    assert where == "cuda" and on_gpu.device.type == "cuda" and peak is not None and peak > 0
    on_cpu, where = case_probabilities(model, image.numpy(), replace(window, stitch="cpu"),
                                       device=GPU)
    assert where == "cpu" and on_cpu.device.type == "cpu"
    torch.testing.assert_close(on_cpu, on_gpu.cpu(), rtol=0, atol=1e-6)
