"""Checkpoints: weights_only round trips, RNG states, loading a model for inference."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hco_cli.config import validate_config
from hco_cli.errors import CheckpointError
from hco_cli.models.vnet import build_model
from hco_cli.optim import build_optimizer
from hco_cli.runs.checkpoint import (
    load_checkpoint,
    load_model_for_inference,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from hco_cli.training.presets import preset


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_round_trip_through_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = _draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = _draws()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_optimizer_state_with_hco_buffers_round_trips(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer("adamw-hco", net.parameters(), lr=1e-3)
    loss_l, loss_u = net(torch.randn(4, 3)).sum(), net(torch.randn(4, 3)).pow(2).sum()
    gl = torch.autograd.grad(loss_l, list(net.parameters()))
    gu = torch.autograd.grad(loss_u, list(net.parameters()))
    opt.step_two_source(list(gl), list(gu))
    save_checkpoint(tmp_path / "o.pt", {"opt": opt.state_dict()})
    loaded = load_checkpoint(tmp_path / "o.pt")["opt"]
    original = opt.state_dict()
    assert loaded["param_groups"] == original["param_groups"]
    for key, state in original["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(loaded["state"][key][name]), torch.as_tensor(value))


def _model_checkpoint(path: Path) -> torch.nn.Module:
    raw = preset("synthetic")
    raw["model"]["n_filters"] = 4
    config = validate_config(raw)
    torch.manual_seed(0)
    model = build_model(config.model, in_channels=1, num_classes=3)
    save_checkpoint(path, {"model": model.state_dict(), "config": config.model_dump(mode="json"),
                           "in_channels": 1, "num_classes": 3, "kind": "best"})
    return model


def test_load_model_for_inference_from_run_folder_and_file(tmp_path):
    model = _model_checkpoint(tmp_path / "run/checkpoints/best.pt")
    for source in (tmp_path / "run", tmp_path / "run/checkpoints/best.pt"):
        loaded, config = load_model_for_inference(source, device="cpu")
        assert not loaded.training and config.model.n_filters == 4
        want = model.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match=r"has no checkpoints/last\.pt"):
        load_model_for_inference(tmp_path / "run", which="last")


def test_foreign_or_corrupt_files_are_checkpoint_errors(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="is not an hco checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"format": 1, "evil": random.Random()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="cannot read"):  # weights_only refuses objects
        load_checkpoint(tmp_path / "pickled.pt")
