"""Experiment tracking: the records rank 0 writes to ``metrics.jsonl``, fanned out to sinks.

``metrics.jsonl`` is always written; a :class:`Tracker` passes the same records (training
blocks, validations) to any number of sinks: TensorBoard (``--log tensorboard``), MLflow
(``--log mlflow``) or a Python user's own :class:`Sink`. The loop hands over records it has
already copied to the host in its one synchronisation per log interval, so a sink adds no
host synchronisation. A sink that raises is switched off with one warning and training goes
on: tracking must never cost a run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hco_cli.config import TrackingConfig
from hco_cli.errors import MissingExtraError
from hco_cli.io_utils import write_json
from hco_cli.optim import DIAGNOSTIC_KEYS
from hco_cli.training.validation import MidSlice

Status = Literal["finished", "failed", "killed"]
# The import each sink needs, and the extra that installs it.
_NEEDS = {"tensorboard": ("tensorboard", "PIL"), "mlflow": ("mlflow",)}
# Record fields that are labels, not measurements.
_NOT_SCALARS = {"phase", "iter", "train_phase", "split", "select_on", "best", "dice_per_class",
                "also"}


@dataclass(frozen=True)
class TrackingStart:
    """What a sink learns when the run starts (or resumes after ``resumed_at``)."""

    run_dir: Path
    config: dict[str, Any]  # the resolved TrainConfig as JSON data
    info: dict[str, Any]  # the run summary (run.json keys and more)
    resumed_at: int | None = None  # the global iteration a resume continues from


class Sink:
    """A destination for the loop's records; subclasses override what they need.

    ``write`` receives metrics.jsonl's records (training blocks and validations, each with
    ``iter``); ``images`` mid-slices of a few validation cases, where ``takes_images``.
    """

    name = "sink"
    takes_images = False

    def open(self, start: TrackingStart) -> None:
        """Called once before the first record."""

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Called with every block of records the loop writes."""

    def images(self, iteration: int, slices: Sequence[MidSlice]) -> None:
        """Called after a validation with its mid-slices."""

    def close(self, status: Status) -> None:
        """Called once when the run ends, however it ends."""


class Tracker:
    """Fans records out to sinks; a sink that raises is dropped with one warning."""

    def __init__(self, sinks: Sequence[Sink], *, warn: Callable[[str], None]) -> None:
        self.sinks = list(sinks)
        self.warn = warn

    @property
    def wants_images(self) -> bool:
        return any(s.takes_images for s in self.sinks)

    def open(self, start: TrackingStart) -> None:
        self._each("open", start)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self._each("write", records)

    def images(self, iteration: int, slices: Sequence[MidSlice]) -> None:
        if slices:
            self._each("images", iteration, slices)

    def close(self, status: Status) -> None:
        self._each("close", status)
        self.sinks = []

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # disk full, server down, a bug in a user's sink
                self.sinks.remove(sink)
                text = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self.warn(f"{sink.name} tracking failed in {method} ({text}); it is off for "
                          "the rest of this run (metrics.jsonl is unaffected)")


def check_available(sinks: Sequence[str]) -> None:
    """A one-line MissingExtraError naming the pip command for a sink whose extra is absent."""
    for name in sinks:
        missing = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingExtraError(f"--log {name} needs the {name} extra ({missing[0]} is not "
                                    f"installed): pip install 'hco-cli[{name}]'")


def build_sinks(config: TrackingConfig) -> list[Sink]:
    """The sinks a run's ``tracking`` section names (their extras checked)."""
    check_available(config.sinks)
    factories: dict[str, Callable[[], Sink]] = {
        "tensorboard": lambda: TensorBoardSink(images=config.images),
        "mlflow": lambda: MlflowSink(config)}
    return [factories[name]() for name in config.sinks]


# ------------------------------------------------------------------------ shared helpers
def scalars(record: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """A record's step and its finite numbers by tag: ``train/loss_l``, ``diagnostics/cos_lu``,
    ``val/dice``, ``val/dice_class_1``, ..."""
    val = record.get("phase") == "val"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        group = "val" if val else "diagnostics" if key in DIAGNOSTIC_KEYS else "train"
        out[f"{group}/{key}"] = float(value)
    if val:
        for c, value in enumerate(record.get("dice_per_class") or [], start=1):
            if isinstance(value, (int, float)):
                out[f"val/dice_class_{c}"] = float(value)
        for split, value in (record.get("also") or {}).items():  # also_select_on
            if isinstance(value, (int, float)):
                out[f"val/dice_{split}"] = float(value)
    return int(record["iter"]), {k: v for k, v in out.items() if math.isfinite(v)}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config data as dotted keys and string values (``optimizer.lr: '0.01'``)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]],
                    dtype=np.float32) / 255


def overlay(mid: MidSlice, *, alpha: float = 0.5) -> np.ndarray:
    """Image | label | prediction side by side, classes painted over the image, uint8 (H, W, 3).

    The slice is drawn with Y down and X across; intensities are stretched between the 1st
    and 99th percentile. Voxels of the ignore label (>= num_classes) are not painted.
    """
    image = mid.image.T.astype(np.float32)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    gray = np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1)
    base = np.repeat(gray[..., None], 3, axis=-1)
    panels = [base]
    for mask in (mid.label.T, mid.prediction.T):
        painted = base.copy()
        for c in range(1, mid.num_classes):
            where = mask == c
            painted[where] = (1 - alpha) * painted[where] + alpha * _PALETTE[(c - 1) % 8]
        panels.append(painted)
    return np.round(np.concatenate(panels, axis=1) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------- sinks
class TensorBoardSink(Sink):
    """Scalars of every record and validation overlays in ``RUN/tensorboard``.

    A resume purges the events past its checkpoint (``purge_step``), as metrics.jsonl drops
    their records, so the curves continue without a doubled stretch.
    """

    name = "tensorboard"
    takes_images = True

    def __init__(self, *, images: int = 2) -> None:
        self.max_images = images
        self.writer: Any = None

    def open(self, start: TrackingStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = start.resumed_at + 1 if start.resumed_at is not None else None
        self.writer = SummaryWriter(log_dir=str(start.run_dir / "tensorboard"),
                                    purge_step=purge)
        if start.resumed_at is None:
            text = json.dumps(start.config, indent=2)
            self.writer.add_text("config", f"```\n{text}\n```", 0)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            step, values = scalars(record)
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def images(self, iteration: int, slices: Sequence[MidSlice]) -> None:
        for mid in slices[:self.max_images]:
            self.writer.add_image(f"val/overlay/{mid.case}", overlay(mid), iteration,
                                  dataformats="HWC")

    def close(self, status: Status) -> None:
        if self.writer is not None:
            self.writer.close()


MLFLOW_RUN_FILE = "mlflow.json"


def mlflow_uri(config: TrackingConfig) -> str:
    """The config's URI, else ``$MLFLOW_TRACKING_URI``, else ``file:<working dir>/mlruns``."""
    uri = config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or (Path.cwd() / "mlruns").resolve().as_uri()


class MlflowSink(Sink):
    """Params from the resolved config, every record's numbers as metrics, and the run
    folder's summary files as artifacts when the run ends.

    The MLflow run's id is kept in ``RUN/mlflow.json``, so a resume continues the same MLflow
    run. MLflow cannot delete logged points, so a resume reads each metric's last logged step
    once and skips the steps that the interrupted attempt already logged (the iterations
    between its checkpoint and the interruption): every step appears once, with the value of
    its first attempt (identical where the resume is bit-exact, as on CPU).
    Calls are synchronous: a slow server slows the loop at each log interval.
    """

    name = "mlflow"

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self.client: Any = None
        self.run_id = ""
        self.logged: dict[str, int] = {}  # a resumed run: each metric's last step logged

    def open(self, start: TrackingStart) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(self.config)
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked;
            # it is what a local mlruns/ needs without a database (mlflow-skinny has none).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.run_dir = start.run_dir
        saved = _read_json(start.run_dir / MLFLOW_RUN_FILE)
        if start.resumed_at is not None and saved.get("tracking_uri") == uri:
            self.run_id = str(saved["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
                self.logged[key] = max(steps, default=-1)
            return
        run = self.client.create_run(self._experiment(), run_name=_run_name(start.run_dir),
                                     tags={"hco.run_dir": str(start.run_dir.resolve()),
                                           **{f"hco.{k}": str(start.info.get(k)) for k in
                                              ("dataset", "framework", "optimizer", "seed",
                                               "fold")}})
        self.run_id = run.info.run_id
        write_json(start.run_dir / MLFLOW_RUN_FILE, {"tracking_uri": uri, "run_id": self.run_id})
        params = [Param(k, v[:6000]) for k, v in flatten(start.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _experiment(self) -> str:
        name = self.config.experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # created meanwhile by a parallel run of the sweep
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for step, values in map(scalars, records)
                   for tag, value in values.items() if step > self.logged.get(tag, -1)]
        for i in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self, status: Status) -> None:
        if self.client is None or not self.run_id:
            return
        for name in ("run.json", "config.yaml", "plans.json"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, status=status.upper())


def _run_name(run_dir: Path) -> str:
    """``<arm>/<fold>-s<seed>`` for a sweep's run, else the folder's name."""
    return "/".join(Path(run_dir).resolve().parts[-2:])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


__all__ = ["MlflowSink", "Sink", "TensorBoardSink", "Tracker", "TrackingStart", "build_sinks",
           "check_available", "flatten", "mlflow_uri", "overlay", "scalars"]
