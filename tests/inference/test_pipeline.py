"""The pipelined prediction path: the same files and scores as the serial path, bounded
background work, and a writer's error surfacing as the usual one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.dataset import CaseGeometry, Geometry
from hco_cli.data.io import read_volume
from hco_cli.data.labels import build_label_map
from hco_cli.errors import DataError
from hco_cli.inference import pipeline
from hco_cli.inference.inputs import InputCase, LoadedCase
from hco_cli.inference.pipeline import WorkQueue, predict_cases_pipelined
from hco_cli.inference.predict import PredictOptions, Window, predict, predict_cases
from tests.inference.tiny_run import tiny_dataset, tiny_run

CPU = torch.device("cpu")


class Signs(nn.Module):
    """Logits (0, x, -x): class 1 where the image is positive, 2 where negative, else 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x, -x], dim=1)


def _blobs(name: str, seed: int, shape: tuple[int, int, int]) -> InputCase:
    """Several positive and negative blobs, two of them of equal size (a tie)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((1, *shape), np.float32)
    for sign in (1.0, -1.0):
        for _ in range(4):
            corner = rng.integers(0, np.array(shape) - 4)
            size = rng.integers(1, 4, size=3)
            box = tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))
            image[(0, *box)] = sign
    image[0, 0:2, 0:2, 0:2] = 1.0  # eight voxels ...
    image[0, -2:, -2:, -2:] = 1.0  # ... and eight more: a tie, unless a blob joins one
    geometry = Geometry(shape=shape, spacing=(1.0, 1.0, 2.0))
    case_geometry = CaseGeometry(case=name, prepared=geometry, original=geometry)
    return InputCase(name, lambda: LoadedCase(image, case_geometry))


@pytest.mark.parametrize("lcc", [False, True])
def test_pipelined_files_equal_the_serial_path(tmp_path: Path, lcc: bool) -> None:
    labels = build_label_map([0, 1, 2])
    cases = [_blobs(f"case{i}", i, (20, 18, 12)) for i in range(5)]
    window = Window(patch_size=(16, 16, 8), stride=(5, 5, 3), num_classes=3, lcc=lcc,
                    batch_size=3)
    serial = predict_cases(Signs(), cases, tmp_path / "serial", window, labels=labels,
                           device=CPU)
    piped, scores = predict_cases_pipelined(Signs(), cases, tmp_path / "piped", window,
                                            labels=labels, device=CPU, writers=2)
    assert scores is None
    assert [c.case for c in piped] == [c.case for c in serial]
    for a, b in zip(serial, piped, strict=True):
        want, got = read_volume(a.path)[0], read_volume(b.path)[0]
        assert got.dtype == want.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
        assert set(b.stages) == {"load", "forward", "labels", "write"}
    if lcc:  # the blobs are not one component per class: the filter did remove something
        raw = predict_cases(Signs(), cases[:1], tmp_path / "raw", replace(window, lcc=False),
                            labels=labels, device=CPU)
        assert (read_volume(raw[0].path)[0] != read_volume(piped[0].path)[0]).any()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    dataset = tiny_dataset(root, classes=2, test=4)
    run, _ = tiny_run(root, dataset, classes=3, which=("best",))
    return dataset, run


def _summary_without_timings(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data.pop("prediction_per_case")
    data.pop("predictions")
    return data


def test_pipelined_evaluation_equals_the_serial_evaluation(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    _, run = tiny
    summaries, arrays = [], []
    for pipelined in (False, True):
        out = tmp_path / f"preds-{pipelined}"
        report = predict(run, PredictOptions(device="cpu", out=out, lcc=True, evaluate=True,
                                             force=True, pipeline=pipelined))
        assert report.summary is not None
        summaries.append(_summary_without_timings(report.summary))
        arrays.append({c.case: read_volume(c.path)[0] for c in report.cases})
        if pipelined:  # each case's scoring seconds in its worker, wall and CPU
            assert all({"score", "score_cpu"} <= set(c.stages) for c in report.cases)
        assert not list(tmp_path.glob(".preds-*"))  # no temporary folder left
    assert summaries[0] == summaries[1]
    assert len(summaries[0]["metric_per_case"]) == 4
    assert arrays[0].keys() == arrays[1].keys()
    for case, array in arrays[0].items():
        np.testing.assert_array_equal(arrays[1][case], array)


def _failing_writer(real: Any, fail_on: str) -> Any:
    def write(labels: np.ndarray, geometry: CaseGeometry, path: Path, label_map: Any) -> None:
        if path.name.startswith(fail_on):
            raise DataError(f"cannot write {path.name}: disk full (a test)")
        real(labels, geometry, path, label_map)
    return write


def test_a_writer_error_surfaces_and_nothing_is_left(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, run = tiny
    second = json.loads((dataset / "splits.json").read_text())["test"][1]
    monkeypatch.setattr(pipeline, "write_prediction",
                        _failing_writer(pipeline.write_prediction, second))
    out = tmp_path / "preds"
    with pytest.raises(DataError, match="disk full"):
        predict(run, PredictOptions(device="cpu", out=out, lcc=True, evaluate=True, force=True))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".preds")] == []
    result = CliRunner().invoke(app, ["predict", str(run), "--device", "cpu", "--out",
                                      str(out), "--lcc"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "disk full" in lines[0], result.stderr
    assert not out.exists()


def test_the_backlog_is_bounded() -> None:
    release = threading.Event()
    queue = WorkQueue(1, backlog=1)
    queue.submit(release.wait)
    queue.submit(release.wait)
    third = threading.Thread(target=queue.submit, args=(release.wait,))
    third.start()
    time.sleep(0.2)
    assert third.is_alive()  # one running, one waiting: the third hand-off waits
    release.set()
    third.join(timeout=5)
    assert not third.is_alive()
    assert queue.results() == [True, True, True]
    queue.close()


def test_a_failed_job_is_raised_at_the_next_hand_off() -> None:
    queue = WorkQueue(1, backlog=2)

    def fail() -> None:
        raise DataError("broken")

    queue.submit(fail)
    deadline = time.monotonic() + 5
    with pytest.raises(DataError, match="broken"):
        while time.monotonic() < deadline:
            queue.submit(lambda: None)
            time.sleep(0.01)
    queue.close()


ROOT = Path(__file__).resolve().parents[2]
_INHERITED = """
import sys
from pathlib import Path
from hco_cli.evaluation.references import LabelSource
from hco_cli.inference.pipeline import scoring_pool

NAMES = ("nibabel", "h5py", "scipy.spatial")

def loaded():
    return [n for n in NAMES if n in sys.modules]

before = loaded()
with scoring_pool(2, {"a": LabelSource("h5", Path("a.h5"), "a")}) as pool:
    print(before, pool.apply(loaded))
"""


def test_scoring_workers_start_with_the_scoring_modules_imported() -> None:
    """A fresh process (nothing imported yet): the scoring workers it forks already hold what
    evaluate_case imports lazily, so no worker imports it again for its first case."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _INHERITED], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    # scipy.spatial (the metrics' rare k-d tree path) is left out: 0.15 s for nothing mostly
    assert out.stdout.split("\n")[0] == "[] ['nibabel', 'h5py']", out.stdout


def test_a_whole_prediction_imports_no_compiler_package(tmp_path: Path) -> None:
    """A fresh ``predict`` (run loading, windows, LCC, writing, scoring) imports neither
    torch._dynamo nor torch._inductor: a stored config's optimizer is not built to check it,
    and building any torch optimizer imports dynamo (1-2 s of a cold ``hco predict``)."""
    dataset = tiny_dataset(tmp_path, classes=2, test=4)
    run, _ = tiny_run(tmp_path, dataset, classes=3, which=("best",))
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from hco_cli.inference.predict import PredictOptions, predict\n"
        f"report = predict(Path({str(run)!r}), PredictOptions(device='cpu', "
        f"data=Path({str(dataset)!r}), out=Path({str(tmp_path / 'preds')!r}), split='test', "
        "lcc=True, evaluate=True))\n"
        "print(len(report.cases), "
        "sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == "4 []", out.stdout + out.stderr
