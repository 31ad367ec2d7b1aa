"""launching_on: the CUDA device a Triton launch goes to."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from hco_cli.devices import launching_on


def test_a_cpu_tensor_changes_nothing() -> None:
    assert isinstance(launching_on(torch.device("cpu")), nullcontext)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_the_other_device_is_current_inside_the_block() -> None:
    torch.cuda.set_device(0)
    assert isinstance(launching_on(torch.device("cuda", 0)), nullcontext)
    with launching_on(torch.device("cuda", 1)):
        assert torch.cuda.current_device() == 1
    assert torch.cuda.current_device() == 0
