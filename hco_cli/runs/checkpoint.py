"""Checkpoints as plain data: tensors, numbers, strings, lists and dicts only.

Every file is read back with ``torch.load(weights_only=True)``, so nothing pickled (no config
objects, no NumPy arrays) is ever stored: the config goes in as a dict, RNG states as tensors
and lists. Files are written under a temporary name and renamed, so a crash mid-save leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hco_cli.config import TrainConfig, validate_config
from hco_cli.errors import CheckpointError, ConfigError
from hco_cli.io_utils import atomic_path
from hco_cli.models.vnet import build_model
from hco_cli.runs.folder import config_hash
from hco_cli.runs.layout import EvalCheckpoint, RunFolder

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (temporary file, then rename), with the hash of its
    ``config`` (compared with config.yaml on resume)."""
    if "config" in payload:
        payload = {**payload, "config_hash": config_hash(payload["config"])}
    with atomic_path(Path(path), suffix=".pt") as tmp:
        try:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
        except RuntimeError as exc:  # torch reports a failed write (a full disk) this way
            raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from exc


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; CheckpointError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an hco checkpoint (format {CHECKPOINT_FORMAT})")
    return data


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    nps = state["numpy"]
    keys = nps["keys"].numpy().astype(np.uint32)
    np.random.set_state((nps["kind"], keys, nps["pos"], nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def resolve_checkpoint(path: Path, which: EvalCheckpoint | Literal["pretrain"]) -> Path:
    """A ``.pt`` file as given, or ``RUN/checkpoints/<which>.pt`` for a run folder."""
    path = Path(path)
    if path.is_dir():
        target = RunFolder(path).checkpoint(which)
        if not target.is_file():
            hint = (" (best.pt exists only when validation ran on a non-empty split)"
                    if which == "best" else
                    f" (written only by runs with validation.also_select_on: "
                    f"[{which.removeprefix('best-')}])" if which.startswith("best-") else "")
            raise CheckpointError(f"run {path} has no checkpoints/{which}.pt{hint}")
        return target
    return path


def load_model_for_inference(
    path: Path,
    *,
    which: EvalCheckpoint = "best",
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, TrainConfig]:
    """The evaluation network of a run (or a .pt file), in eval mode, and its TrainConfig."""
    data = load_checkpoint(resolve_checkpoint(path, which), map_location="cpu")
    if "model" not in data or "config" not in data:
        raise CheckpointError(f"{path}: checkpoint holds no evaluation model")
    try:
        config: TrainConfig = validate_config(data["config"], source=str(path),
                                                 try_optimizer=False)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored configuration is invalid: {exc}") from exc
    model = build_model(config.model, in_channels=int(data["in_channels"]),
                        num_classes=int(data["num_classes"]))
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {exc}") from exc
    return model.to(device).eval(), config
