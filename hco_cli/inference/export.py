"""``hco export``: a run's network as ONNX or TorchScript, with its input contract, checked.

The exported graph maps an image batch (N, C, X, Y, Z) of the run's patch size (N free) to
logits (N, K, X, Y, Z); softmax over axis 1 gives probabilities. ``MODEL.json`` beside it
states what the network expects, from the run's ``plans.json``: channels, patch, spacing,
orientation, crop rule, intensity normalisation, the label values of the K outputs, and the
sliding-window stride of the run's validation; the full plan is included.

The export is checked before it gets its name: the exported file is loaded back (ONNX Runtime
for ONNX, ``torch.jit.load`` for TorchScript) and run on a random batch of two patches; the
largest absolute difference from PyTorch's logits is reported, and an export above the
tolerance is refused (nothing is written). Export runs on the CPU, in float32.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from hco_cli import __version__
from hco_cli.data.plan import DataPlan
from hco_cli.errors import ConfigError, HcoError, MissingExtraError
from hco_cli.inference.runs import LoadedRun, load_run, model_channels, run_plan
from hco_cli.inference.sliding_window import logits_of
from hco_cli.io_utils import atomic_path, write_json
from hco_cli.runs.layout import EvalCheckpoint

Format = Literal["onnx", "torchscript"]
Step = Callable[[str], None]
INPUT_NAME, OUTPUT_NAME = "image", "logits"
CHECK_BATCH = 2
_CPU = torch.device("cpu")


class ExportCheckError(HcoError):
    """The exported model's output differs from PyTorch's by more than the tolerance."""


class ExportOptions(BaseModel):
    """What ``hco export`` writes."""

    model_config = ConfigDict(extra="forbid")

    format: Format
    out: Path
    checkpoint: EvalCheckpoint | None = None
    tolerance: float = Field(default=1e-4, gt=0, description="max abs logit difference")
    opset: int | None = Field(default=None, ge=7, description="ONNX opset; default: torch's")
    force: bool = False

    @model_validator(mode="after")
    def _opset_for_onnx(self) -> ExportOptions:
        if self.opset is not None and self.format != "onnx":
            raise ValueError(f"--opset applies to --format onnx, not {self.format}")
        return self


@dataclass(frozen=True)
class ExportReport:
    """Where the model and its contract went, and how the check came out."""

    out: Path
    contract: Path
    format: Format
    input_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    seconds: float


class LogitsOnly(nn.Module):
    """The network with its output reduced to the logits tensor (what both formats trace)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x))


def contract_path(out: Path) -> Path:
    """``model.onnx`` -> ``model.json`` (beside the model)."""
    return Path(out).with_suffix(".json")


def export_run(run: Path, options: ExportOptions, *, step: Step | None = None) -> ExportReport:
    """Export ``run``'s network (a run folder or .pt file) and check it (module docstring)."""
    start = time.perf_counter()
    out = Path(options.out)
    for target in (out, contract_path(out)):
        if target.exists() and not options.force:
            raise ConfigError(f"{target} already exists; use --force to replace it")
    if out.suffix == ".json":
        raise ConfigError(f"--out {out}: the .json name is the contract's; choose e.g. model.onnx")
    loaded = load_run(Path(run), options.checkpoint, _CPU)
    plan = _plan(loaded)
    shape = model_channels(loaded.model)
    channels = shape[0] if shape else plan.channels
    network = LogitsOnly(loaded.model).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, channels, *loaded.patch_size), generator=generator)
    check = torch.randn((CHECK_BATCH, channels, *loaded.patch_size), generator=generator)
    with torch.inference_mode():
        expected = network(check).numpy()
    (step or _quiet)(f"exporting {options.format}")
    with atomic_path(out, suffix=out.suffix or ".tmp") as tmp:
        if options.format == "onnx":
            _export_onnx(network, sample, tmp, opset=options.opset)
            got = _run_onnx(tmp, check)
        else:
            _export_torchscript(network, sample, tmp)
            got = _run_torchscript(tmp, check)
        (step or _quiet)("checking the export")
        diff = float(np.abs(got - expected).max())
        if not diff <= options.tolerance:
            raise ExportCheckError(
                f"the exported {options.format} model differs from PyTorch by {diff:.3g} "
                f"(max abs logit difference, tolerance {options.tolerance:g}); nothing written")
    contract = contract_path(out)
    write_json(contract, _contract(loaded, plan, options, out, channels, diff))
    return ExportReport(out=out, contract=contract, format=options.format,
                        input_shape=tuple(check.shape), max_abs_diff=diff,
                        tolerance=options.tolerance, seconds=time.perf_counter() - start)


def _plan(run: LoadedRun) -> DataPlan:
    try:
        return run_plan(run)
    except HcoError:
        raise ConfigError(f"{run.path}: no plans.json in the run or its dataset; the export's "
                          "input contract comes from it (retrain with this hco version, whose "
                          "train copies it into the run)") from None


def _contract(run: LoadedRun, plan: DataPlan, options: ExportOptions, out: Path,
              channels: int, diff: float) -> dict[str, Any]:
    labels = plan.labels
    pre = plan.preprocess
    return {
        "format": options.format,
        "model": out.name,
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "N, C, X, Y, Z",
                  "shape": ["N", channels, *run.patch_size], "channels": channels,
                  "patch_size": list(run.patch_size)},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "layout": "N, K, X, Y, Z",
                   "shape": ["N", labels.num_classes, *run.patch_size],
                   "meaning": "logits; softmax over axis 1 gives class probabilities",
                   "label_values": list(labels.values), "class_names": list(labels.names)},
        "spacing_mm": list(pre.spacing) if pre.spacing else None,
        "spacing_note": ("every scan resampled to spacing_mm" if pre.spacing else
                         "native spacing: scans outside the training range "
                         f"{list(plan.spacing_min)} to {list(plan.spacing_max)} mm (within "
                         "x1.25) are resampled to spacing_median_mm"),
        "spacing_median_mm": list(plan.spacing_median),
        "orientation": plan.orientation,
        "normalization": {"scheme": pre.norm, "ct_window": list(pre.ct_window)
                          if pre.norm == "ct" else None, "upstream": plan.upstream},
        "crop": pre.crop,
        "sliding_window": {"patch_size": list(run.patch_size),
                           "stride": list(run.config.validation.stride),
                           "aggregation": "mean of softmax over overlapping windows"},
        "check": {"max_abs_diff": diff, "tolerance": options.tolerance,
                  "batch": CHECK_BATCH, "runtime": "onnxruntime" if options.format == "onnx"
                  else "torch.jit"},
        "source": {"run": str(run.path), "checkpoint": run.checkpoint,
                   "hco_version": __version__},
        "plan": plan.model_dump(mode="json"),
    }


def _export_onnx(network: nn.Module, sample: Tensor, path: Path, *, opset: int | None) -> None:
    _require("onnx", "onnxscript")
    batch = torch.export.Dim("batch", min=1, max=1024)
    with _quiet_torch():
        torch.onnx.export(network, (sample,), str(path), dynamo=True, verbose=False,
                          external_data=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"x": {0: batch}})


def _run_onnx(path: Path, batch: Tensor) -> np.ndarray:
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])


def _export_torchscript(network: nn.Module, sample: Tensor, path: Path) -> None:
    with _quiet_torch(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(network, sample)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, batch: Tensor) -> np.ndarray:
    with _quiet_torch(), torch.no_grad():
        loaded = torch.jit.load(str(path), map_location="cpu")
        return np.asarray(loaded(batch).numpy())


def _require(*modules: str) -> None:
    """MissingExtraError naming the extra when an optional module is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"ONNX export needs {', '.join(missing)}: "
                                "pip install 'hco-cli[onnx]'")


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence the exporters' deprecation notes and registration chatter (not errors)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _quiet(_: str) -> None:
    """No progress report."""
