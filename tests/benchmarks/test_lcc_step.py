"""benchmarks/lcc_step.py on the CPU: its batch looks like a teacher's labels (several
components per volume) and, without a GPU, it refuses in one line instead of timing nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.benchmarks.scripts import load_benchmark

ls = load_benchmark("lcc_step")


def test_the_batch_has_several_components_per_volume() -> None:
    labels = ls.teacher_labels(0)
    assert labels.shape == (4, 112, 112, 80) and 0.02 < labels.mean() < 0.3
    structure = ndimage.generate_binary_structure(3, 3)
    counts = [ndimage.label(volume, structure=structure)[1] for volume in labels]
    assert min(counts) >= 2, counts
    assert np.array_equal(labels, ls.teacher_labels(0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_refuses() -> None:
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        ls.main(["--rounds", "1"])
