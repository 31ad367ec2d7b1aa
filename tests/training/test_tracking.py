"""Tracking sinks: TensorBoard and MLflow read back, a failing sink, a missing extra."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.config import TrackingConfig
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import ConfigError, MissingExtraError
from hco_cli.optim import DIAGNOSTIC_KEYS
from hco_cli.training import tracking
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressEvent
from hco_cli.training.logging import read_metrics
from hco_cli.training.tracking import Sink, TrackingStart, overlay, scalars
from hco_cli.training.validation import MidSlice
from tests.training.test_loop import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=4, val=1, test=1, shape=(24, 24, 20))
    return out


def _config(data: Path, run_dir: Path, sinks: list[str], **changes: Any) -> Any:
    """Every record a tracked one: log and diagnose each iteration, validate every 2."""
    return tiny_config(data, run_dir, **{"log_every": 1, "diagnostics_every": 1,
                                         "tracking": {"sinks": sinks, "images": 1}, **changes})


def _expected(run_dir: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as tag -> step -> value, through the sinks' own mapping."""
    out: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        step, values = scalars(record)
        for tag, value in values.items():
            assert step not in out.setdefault(tag, {})
            out[tag][step] = value
    return out


def _events(run_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0,
                                                                        "images": 0})
    acc.Reload()
    return acc


# ------------------------------------------------------------------------------ mapping
def test_scalars_name_every_number_of_a_record() -> None:
    step, values = scalars({"phase": "selftrain", "iter": 7, "epoch": 2, "lr": 0.01,
                            "time": 1.5, "loss_l": 0.5, "loss_u": 0.25, "ratio": 0.5,
                            "admitted": None, "cos_lu": -0.25, "step_norm": float("nan")})
    assert step == 7
    assert values == {"train/epoch": 2.0, "train/lr": 0.01, "train/time": 1.5,
                      "train/loss_l": 0.5, "train/loss_u": 0.25, "train/ratio": 0.5,
                      "diagnostics/cos_lu": -0.25}
    step, values = scalars({"phase": "val", "train_phase": "selftrain", "iter": 8,
                            "split": "val", "dice": 0.75, "dice_per_class": [0.5, None, 1.0],
                            "select_on": "val", "score": 0.75, "best": True, "time": 2.0})
    assert step == 8
    assert values == {"val/dice": 0.75, "val/score": 0.75, "val/time": 2.0,
                      "val/dice_class_1": 0.5, "val/dice_class_3": 1.0}


def test_overlay_paints_label_and_prediction_beside_the_image() -> None:
    image = np.zeros((4, 3), dtype=np.float32)
    image[:, 2] = 1.0  # (X, Y): the bottom row (Y = 2) is bright
    label = np.zeros((4, 3), dtype=np.int64)
    label[1, 0] = 1
    label[2, 0] = 9  # the ignore label: not painted
    prediction = np.full((4, 3), 2, dtype=np.int64)
    rgb = overlay(MidSlice("c", image, label, prediction, num_classes=3))
    assert rgb.shape == (3, 12, 3) and rgb.dtype == np.uint8
    assert rgb[2, 0].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [0, 0, 0]
    red, green = np.array([230, 25, 75]), np.array([60, 180, 75])  # classes 1 and 2
    # class 1 at X=1, Y=0: half red on black (a half may round either way)
    assert np.abs(rgb[0, 4 + 1] - red / 2).max() <= 0.5
    assert rgb[0, 4 + 2].tolist() == [0, 0, 0]  # the ignore label
    assert np.abs(rgb[2, 8 + 3] - (255 + green) / 2).max() <= 0.5  # class 2 on white
    assert np.abs(rgb[0, 8] - green / 2).max() <= 0.5


# ---------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_hold_every_logged_scalar(synthetic: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(synthetic, run, ["tensorboard"]))
    expected = _expected(run)
    assert {f"diagnostics/{k}" for k in DIAGNOSTIC_KEYS} <= set(expected)
    assert {"train/loss_l", "train/lr", "val/dice", "val/dice_class_1",
            "val/dice_class_2"} <= set(expected)
    acc = _events(run)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, steps in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == {s: float(np.float32(v)) for s, v in steps.items()}, tag
    images = acc.Images(acc.Tags()["images"][0])
    validations = [r["iter"] for r in read_metrics(run / "metrics.jsonl") if r["phase"] == "val"]
    assert [i.step for i in images] == validations == [1, 3, 4]  # phase ends and every 2
    assert (images[0].width, images[0].height) == (3 * 24, 24)  # 3 panels of X x Y


def _interrupt_after_iteration_3(data: Path, run: Path, sink: str) -> None:
    """Train with ``sink`` until global iteration 3 has been logged; last.pt holds 2."""
    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(data, run, [sink], checkpoint_every=2), progress=stop)


def test_resumed_tensorboard_run_has_each_step_once(synthetic: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"

    _interrupt_after_iteration_3(synthetic, run, "tensorboard")
    # Iteration 3 (and its validation) reached TensorBoard after last.pt (iteration 2).
    assert [e.step for e in _events(run).Scalars("train/loss_l")] == [1, 2, 3]
    assert [e.step for e in _events(run).Scalars("val/dice")] == [1, 3]
    resume(run)
    acc = _events(run)
    for tag, steps in _expected(run).items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(s, float(np.float32(v))) for s, v in sorted(steps.items())], tag


# --------------------------------------------------------------------------------- MLflow
def test_mlflow_local_store_holds_params_metrics_and_artifacts(
        synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run = tmp_path / "run"
    train(_config(synthetic, run, ["mlflow"]))
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("hco")
    [found] = client.search_runs([experiment.experiment_id])
    assert json.loads((run / "mlflow.json").read_text()) == {
        "tracking_uri": store, "run_id": found.info.run_id}
    assert found.info.status == "FINISHED"
    params = found.data.params
    assert (params["optimizer.name"], params["optimizer.lr"]) == ("sgd-hco", "0.01")
    assert params["framework.pretrain_iterations"] == "1"
    assert params["tracking.sinks"] == "['mlflow']"
    for tag, steps in _expected(run).items():
        history = client.get_metric_history(found.info.run_id, tag)
        assert sorted((m.step, m.value) for m in history) == sorted(steps.items()), tag
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert artifacts == {"run.json", "config.yaml", "plans.json"}
    saved = client.download_artifacts(found.info.run_id, "run.json", str(tmp_path / "dl"))
    assert json.loads(Path(saved).read_text()) == json.loads((run / "run.json").read_text())


def test_resumed_mlflow_run_has_each_step_once(
        synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run = tmp_path / "run"

    _interrupt_after_iteration_3(synthetic, run, "mlflow")
    client = MlflowClient(tracking_uri=store)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    # Iteration 3 reached MLflow after last.pt (iteration 2): the resume runs it again.
    assert [m.step for m in client.get_metric_history(run_id, "train/loss_l")] == [1, 2, 3]
    resume(run)
    assert client.get_run(run_id).info.status == "FINISHED"
    for tag, steps in _expected(run).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
        assert [step for step, _ in history] == sorted(steps), tag
        if not tag.endswith("/time"):  # wall clock: the first attempt's, by design
            assert history == sorted(steps.items()), tag


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mlflow_server_down_warns_and_training_goes_on(
        synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    events: list[ProgressEvent] = []
    result = train(_config(synthetic, tmp_path / "run", ["mlflow"]), progress=events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow tracking failed in open")
    assert result.finished and result.warnings == warnings
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["finished"] is True and info["warnings"] == warnings


# ------------------------------------------------------------------------- failing sinks
class _Recorder(Sink):
    name = "recorder"

    def __init__(self, fail_on: str = "", after: int = 0) -> None:
        self.calls: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.fail_on, self.after = fail_on, after

    def _call(self, method: str) -> None:
        self.calls.append(method)
        if method == self.fail_on and self.calls.count(method) > self.after:
            raise OSError(28, "No space left on device")

    def open(self, start: TrackingStart) -> None:
        self._call("open")

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self._call("write")
        self.records.extend(records)

    def close(self, status: tracking.Status) -> None:
        self._call(f"close {status}")


@pytest.mark.parametrize(("fail_on", "after", "calls"), [
    ("write", 2, ["open", "write", "write", "write"]),  # the third write raises
    ("open", 0, ["open"])])
def test_a_sink_that_raises_is_dropped_and_the_run_goes_on(
        synthetic: Path, tmp_path: Path, fail_on: str, after: int, calls: list[str]) -> None:
    broken, healthy = _Recorder(fail_on, after), _Recorder()
    events: list[ProgressEvent] = []
    result = train(_config(synthetic, tmp_path / "run", []), progress=events.append,
                   sinks=[broken, healthy])
    warnings = [e.message for e in events if e.kind == "warning"]
    assert warnings == [f"recorder tracking failed in {fail_on} (OSError: [Errno 28] No space "
                        "left on device); it is off for the rest of this run (metrics.jsonl "
                        "is unaffected)"]
    assert result.finished
    written = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["iter"] for r in written if r["phase"] != "val"] == [1, 2, 3, 4]
    assert healthy.records == written  # the same records, validations included
    assert healthy.calls[0] == "open" and healthy.calls[-1] == "close finished"
    assert broken.calls == calls  # never called again, not even to close


def test_keyboard_interrupt_closes_sinks_as_killed(synthetic: Path, tmp_path: Path) -> None:
    sink = _Recorder()

    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.iteration == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(synthetic, tmp_path / "run", []), progress=stop, sinks=[sink])
    assert sink.calls[-1] == "close killed"


# ------------------------------------------------------------------------------ user errors
def test_missing_extra_is_one_line_naming_pip(synthetic: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MissingExtraError):
        tracking.build_sinks(TrackingConfig(sinks=["mlflow"]))
    result = runner.invoke(app, ["train", "--dataset", "synthetic", "--data", str(synthetic),
                                 "--run-dir", str(tmp_path / "r"), "--log", "tensorboard,mlflow"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --log mlflow needs the mlflow extra (mlflow is not installed): "
                     "pip install 'hco-cli[mlflow]'"]
    assert not (tmp_path / "r").exists()


def test_unknown_sink_is_one_line(synthetic: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--dataset", "synthetic", "--data", str(synthetic),
                                 "--run-dir", str(tmp_path / "r"), "--log", "wandb"])
    assert result.exit_code == 1
    assert "tracking.sinks: unknown sink 'wandb'; choose from: tensorboard, mlflow" in (
        result.output)
    assert "Traceback" not in result.output
    with pytest.raises(ConfigError, match="unknown sink"):
        tiny_config(synthetic, tmp_path / "x", tracking={"sinks": ["tb"]})
