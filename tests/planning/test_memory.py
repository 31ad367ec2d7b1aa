"""The memory model against what autograd really saves on CPU, and its parameter count."""

from __future__ import annotations

import pytest
import torch

from hco_cli.models import ModelConfig
from hco_cli.models.vnet import build_model
from hco_cli.planning.measure import measure_saved_bytes
from hco_cli.planning.memory import (
    NetworkShape,
    estimate_memory,
    graphs,
    parameter_count,
    saved_elements,
)

ANISO = ([(2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)],
         [(3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3)])
ISO = ([(2, 2, 2)] * 4, [(3, 3, 3)] * 5)


@pytest.mark.parametrize(("patch", "layout"), [((32, 32, 16), ISO), ((48, 32, 32), ISO),
                                               ((64, 48, 12), ANISO)])
@pytest.mark.parametrize("dropout", [True, False])
def test_saved_elements_match_autograd_saved_tensors(patch, layout, dropout) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_filters=4, dropout=dropout, strides=layout[0], kernels=layout[1])
    model = build_model(cfg, in_channels=2, num_classes=3).train()
    measured = measure_saved_bytes(model, torch.randn(2, 2, *patch)) / 4 / 2  # fp32, 2 samples
    net = NetworkShape(patch=patch, strides=layout[0], n_filters=4, in_channels=2,
                       num_classes=3, dropout=dropout)
    predicted = saved_elements(net)
    # The model leaves out BatchNorm's per-channel statistics only: a few hundred elements.
    assert predicted <= measured < predicted + 2000


@pytest.mark.parametrize("layout", [ISO, ANISO])
@pytest.mark.parametrize("n_filters", [4, 16])
def test_parameter_count_matches_the_network(layout, n_filters) -> None:
    cfg = ModelConfig(n_filters=n_filters, strides=layout[0], kernels=layout[1])
    model = build_model(cfg, in_channels=1, num_classes=2)
    count = sum(p.numel() for p in model.parameters())
    assert parameter_count(n_filters, kernels=layout[1], strides=layout[0]) == count
    if layout is ISO and n_filters == 16:
        assert count == 9_448_866


def test_estimate_grows_with_patch_batch_and_framework() -> None:
    def total(patch=(112, 112, 80), framework="bcp", labeled=4, amp=True):
        net = NetworkShape(patch=patch, strides=ISO[0])
        return estimate_memory(net, framework=framework, labeled=labeled, unlabeled=labeled,
                               amp=amp).total

    assert total((128, 112, 80)) > total() > total((112, 112, 64))
    assert total(labeled=2) < total() < total(framework="cmt")
    assert total(amp=False) > total()
    assert graphs("bcp", 4, 4) == 4 and graphs("cmt", 2, 2) == 8
    assert graphs("mean-teacher", 2, 2) == 4 and graphs("supervised", 4, 0) == 4
    with pytest.raises(ValueError, match="unknown framework"):
        estimate_memory(NetworkShape(patch=(16, 16, 16), strides=ISO[0]), framework="x",
                        labeled=1, unlabeled=1)
