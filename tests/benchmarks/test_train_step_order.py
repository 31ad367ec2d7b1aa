"""benchmarks/train_step.py ``+lcc-first``: BCP's order of the self-training step (the
pseudo-labels' component step before the student's forwards) computes what hco's order does,
in the other order, so that the benchmark's ratio between them is a timing difference only."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

from hco_cli.ssl import bcp as bcp_module
from tests.benchmarks.scripts import load_benchmark

ts = load_benchmark("train_step")


def _trial(spec: str) -> Any:
    args = argparse.Namespace(data=None, patch=(32, 32, 16))  # random volumes
    return ts.Trial(spec, "selftrain", args, torch.device("cpu"), instrument=False)


def _watched(spec: str, events: list[str]) -> Any:
    trial = _trial(spec)
    trial.framework.student.register_forward_pre_hook(lambda *_: events.append("student"))
    return trial


def test_components_first_is_bcps_order_with_the_same_numbers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = bcp_module.largest_connected_component
    events: list[str] = []

    def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
        events.append("components")
        return original(*args, **kwargs)

    monkeypatch.setattr(bcp_module, "largest_connected_component", recorded)
    weights, orders = {}, {}
    for spec in ("sgd", "sgd+lcc-first"):
        events.clear()
        trial = _watched(spec, events)
        trial.iterate(2)
        orders[spec] = list(events)
        weights[spec] = [p.detach().clone() for p in trial.framework.student.parameters()]
    assert orders["sgd"] == ["student", "student", "components"] * 2
    assert orders["sgd+lcc-first"] == ["components", "student", "student"] * 2
    assert all(torch.equal(a, b) for a, b in zip(*weights.values(), strict=True))
    start = _trial("sgd").framework.student.parameters()  # not vacuous: the steps moved them
    assert any(not torch.equal(a, b) for a, b in zip(start, weights["sgd"], strict=True))


def test_unknown_candidates_are_named() -> None:
    with pytest.raises(SystemExit, match="lcc-first"):
        _trial("sgd+lcc-last")


def test_compiled_losses_candidate_swaps_in_compiled_losses() -> None:
    """``+closs`` times the run's losses compiled (``compile_losses: true``); without it they
    are the eager functions."""
    assert _trial("sgd").framework.mix_loss is bcp_module.mix_loss
    assert _trial("sgd+closs").framework.mix_loss._torchdynamo_orig_callable is bcp_module.mix_loss
