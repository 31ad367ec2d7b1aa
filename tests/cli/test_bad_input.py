"""The bad-input matrix: every command, driven through the real app, on bad input.

Each case must end with exit code 1, exactly one red error line (on stderr, nothing on stdout),
no traceback, and the workspace exactly as it was: nothing written, moved or removed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.locks import HELD_ENV
from tests.cli import world

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # "{w}" stands for the workspace
    message: str  # a part of the one error line
    # Patches the process (monkeypatch) or holds a resource; entered around the command.
    around: Callable[[Path, pytest.MonkeyPatch], Any] | None = None
    env: dict[str, str] = field(default_factory=dict)


def _read_only(w: Path, mp: pytest.MonkeyPatch) -> Any:
    world.failing_writes(w, world.READ_ONLY)(mp)
    return contextlib.nullcontext()


def _no_space(w: Path, mp: pytest.MonkeyPatch) -> Any:
    world.failing_writes(w, world.NO_SPACE)(mp)
    return contextlib.nullcontext()


def _lock(name: str) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    return lambda w, mp: world.locked(w / name)


def _scored_before(w: Path, mp: pytest.MonkeyPatch) -> Any:
    """An earlier prediction's summary.json beside where this one goes (--out w/scored/preds)."""
    (w / "scored").mkdir(exist_ok=True)
    (w / "scored" / "summary.json").write_text("{}", encoding="utf-8")
    return contextlib.nullcontext()


def _in_workspace(w: Path, mp: pytest.MonkeyPatch) -> Any:
    mp.chdir(w)  # presets name data/<dataset> relative to the current folder
    return contextlib.nullcontext()


SYN = ["prepare", "synthetic", "--shape", "32,32,16"]
DEMO = str(ROOT / "sample_configs" / "synthetic_demo.yaml")
FETAL = str(ROOT / "sample_configs" / "fetal_cmt_adamw.yaml")
TRAIN = ["train", "--config", "{w}/configs/tiny.yaml"]
PRED = ["predict", "{w}/runs/done", "--device", "cpu"]
EVAL = ["evaluate", "{w}/runs/done/eval/best/preds", "{w}/data/syn"]
COMPARE = ["compare", "{w}/runs/done", "{w}/runs/edited"]
SWEEP = ["sweep", "--config", "{w}/configs/tiny.yaml", "--optimizers", "sgd", "--seeds", "1"]

CASES = [
    # ------------------------------------------------------------------------- prepare
    Case("prepare-force-over-run", [*SYN, "--out", "{w}/runs/done", "--force"],
         "holds an hco run, not a dataset"),
    Case("prepare-force-over-notes", [*SYN, "--out", "{w}/notes", "--force"],
         "was not written by hco"),
    Case("prepare-force-over-file", [*SYN, "--out", "{w}/afile.txt", "--force"],
         "afile.txt is a file"),
    Case("prepare-out-under-file", [*SYN, "--out", "{w}/afile.txt/ds"],
         "afile.txt is a file, not a folder"),
    Case("prepare-exists", [*SYN, "--out", "{w}/data/syn"], "already exists; use --force"),
    Case("prepare-labeled-0", ["prepare", "la", "{w}/notes", "--out", "{w}/new", "--labeled",
                               "0"], "Invalid value for '--labeled'"),
    Case("prepare-labeled-negative", ["prepare", "pancreas", "{w}/notes", "--out", "{w}/new",
                                      "--labeled", "-3"], "Invalid value for '--labeled'"),
    Case("prepare-synthetic-labeled-0", [*SYN, "--out", "{w}/new", "--labeled", "0"],
         "Invalid value for '--labeled'"),
    Case("prepare-bad-shape", ["prepare", "synthetic", "--out", "{w}/new", "--shape", "24,24"],
         "--shape: expected 3 numbers"),
    Case("prepare-fractional-shape", [*SYN[:2], "--out", "{w}/new", "--shape", "32.9,32,16"],
         "--shape: expected whole numbers of voxels"),
    Case("prepare-unknown-option", [*SYN, "--out", "{w}/new", "--bogus"],
         "No such option: --bogus"),
    Case("prepare-missing-out", ["prepare", "synthetic"], "Missing option '--out'"),
    Case("prepare-nnunet-target-is-file", [*SYN, "--out", "{w}/new", "--export-nnunet",
                                           "{w}/afile.txt"], "afile.txt is a file, not a folder"),
    Case("prepare-nnunet-target-taken", [*SYN, "--out", "{w}/new", "--export-nnunet",
                                         "{w}/notes"], "is not empty; use --force"),
    Case("prepare-nnunet-target-is-out", [*SYN, "--out", "{w}/new", "--export-nnunet",
                                          "{w}/new"], "--out and --export-nnunet both name"),
    Case("prepare-la-not-a-source", ["prepare", "la", "{w}/notes", "--out", "{w}/new"],
         "train.list"),
    Case("prepare-generic-nothing", ["prepare", "generic", "--out", "{w}/new"],
         "give --images and --labels"),
    Case("prepare-read-only", [*SYN, "--out", "{w}/new"], "Read-only file system: ",
         around=_read_only),
    Case("prepare-no-space", [*SYN, "--out", "{w}/new"], "No space left on device: ",
         around=_no_space),
    Case("prepare-locked", [*SYN, "--out", "{w}/data/syn", "--force"],
         "is in use by process 4242", around=_lock("data/syn")),
    # --------------------------------------------------------------------------- train
    Case("train-force-over-notes", [*TRAIN, "--run-dir", "{w}/notes", "--force"],
         "was not written by hco"),
    Case("train-force-over-dataset", [*TRAIN, "--run-dir", "{w}/data/syn", "--force"],
         "holds an hco dataset, not a run"),
    Case("train-run-dir-is-file", [*TRAIN, "--run-dir", "{w}/afile.txt"],
         "afile.txt is a file, not a folder"),
    Case("train-run-dir-taken", [*TRAIN, "--run-dir", "{w}/runs/done"],
         "is not empty; continue it with --resume"),
    Case("train-resume-missing", ["train", "--resume", "{w}/runs/nothing"],
         "does not exist; start a run there"),
    Case("train-resume-not-a-run", ["train", "--resume", "{w}/notes"], "is not a run folder"),
    Case("train-resume-finished", ["train", "--resume", "{w}/runs/done"], "already finished"),
    Case("train-resume-edited", ["train", "--resume", "{w}/runs/edited"],
         "framework.iterations 3 -> 5); restore it, or resume with the edit: hco train "
         "--resume"),
    Case("train-resume-seed-changed", ["train", "--resume", "{w}/runs/reseeded"],
         "seed cannot change within a run"),
    Case("train-resume-with-options", ["train", "--resume", "{w}/runs/edited", "--seed", "3"],
         "give no other options"),
    Case("train-accept-without-resume", [*TRAIN, "--accept-config-changes"],
         "--accept-config-changes applies to --resume"),
    Case("train-bcp-odd-batch", ["train", "--config", "{w}/configs/bcp_batch1.yaml"],
         "data.labeled_batch_size must be even"),
    Case("train-patch-not-multiple", ["train", "--config", "{w}/configs/patch24.yaml"],
         "is not a multiple of 16"),
    Case("train-batchnorm-one-value", ["train", "--config", "{w}/configs/bn_one_value.yaml"],
         "BatchNorm needs more than one value per channel"),
    Case("train-instancenorm-one-voxel", ["train", "--config", "{w}/configs/in_one_voxel.yaml"],
         "InstanceNorm needs more than one voxel per channel"),
    Case("train-preset-unprepared", ["train", "--dataset", "la"],
         "make it first with: hco prepare la", around=_in_workspace),
    Case("train-sample-config-unprepared", ["train", "--config", FETAL],
         "make it first with: hco prepare generic --images", around=_in_workspace),
    Case("train-unknown-optimizer", ["train", "--config", DEMO, "--data", "{w}/data/syn",
                                     "--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    Case("train-nothing", ["train"], "exactly one of --config FILE or --dataset"),
    Case("train-read-only", [*TRAIN, "--run-dir", "{w}/runs/fresh"],
         "Read-only file system: ", around=_read_only),
    Case("train-resume-locked", ["train", "--resume", "{w}/runs/locked"],
         "is in use by process 4242", around=_lock("runs/locked")),
    Case("train-force-locked", [*TRAIN, "--run-dir", "{w}/runs/locked", "--force"],
         "is in use by process 4242", around=_lock("runs/locked")),
    # ------------------------------------------------------------------------- predict
    Case("predict-evaluate-replaces-summary",
         [*PRED, "--out", "{w}/scored/preds", "--evaluate"], "--evaluate would replace",
         around=_scored_before),
    Case("predict-force-over-notes", [*PRED, "--out", "{w}/notes", "--force"],
         "was not written by hco"),
    Case("predict-force-over-dataset", [*PRED, "--out", "{w}/stray", "--force"],
         "was not written by hco"),
    Case("predict-out-is-file", [*PRED, "--out", "{w}/afile.txt"], "is a file, not a folder"),
    Case("predict-fold-with-images", [*PRED, "--images", "{w}/afile.txt", "--fold", "L0U0",
                                      "--out", "{w}/newpreds"],
         "--fold applies to prepared datasets"),
    Case("export-opset-torchscript", ["export", "{w}/runs/done", "--format", "torchscript",
                                      "--opset", "13", "--out", "{w}/m.pt"],
         "--opset applies to --format onnx"),
    Case("predict-out-exists", PRED, "already exists and is not empty; use --force"),
    Case("predict-out-is-input", [*PRED, "--out", "{w}/data", "--force"], "would replace"),
    Case("predict-missing-run", ["predict", "{w}/runs/nothing"], "does not exist"),
    Case("predict-bad-stride", [*PRED, "--stride", "8,x"], "--stride"),
    Case("predict-read-only", [*PRED, "--out", "{w}/newpreds"], "Read-only file system: ",
         around=_read_only),
    Case("predict-locked", [*PRED, "--force"], "is in use by process 4242",
         around=_lock("runs/done/eval/best/preds")),
    # ------------------------------------------------------------------------ evaluate
    Case("evaluate-csv-under-file", [*EVAL, "--csv", "{w}/afile.txt/x.csv"],
         "afile.txt is a file, not a folder"),
    Case("evaluate-json-is-folder", [*EVAL, "--json", "{w}/notes"], "is a folder"),
    Case("evaluate-absent-class", [*EVAL, "--classes", "1,7"],
         "--classes: 7 appear(s) in no reference and no prediction"),
    Case("evaluate-only-absent-classes", [*EVAL, "--classes", "7,8"],
         "class(es) 7, 8 appear in no reference and no prediction"),
    Case("evaluate-stray-prediction-value", ["evaluate", "{w}/stray", "{w}/data/syn"],
         "holds value(s) [3] that are no class"),
    Case("evaluate-missing-predictions", ["evaluate", "{w}/nothing", "{w}/data/syn"],
         "prediction folder not found"),
    Case("evaluate-bad-classes", [*EVAL, "--classes", "x"], "--classes 'x'"),
    Case("evaluate-bad-jobs", [*EVAL, "--jobs", "0"], "--jobs 0"),
    Case("evaluate-read-only", [*EVAL, "--csv", "{w}/new.csv"], "Read-only file system: ",
         around=_read_only),
    # ------------------------------------------------------------------------- compare
    Case("compare-no-evaluation", ["compare", "{w}/runs/done", "{w}/runs/noeval"],
         "write it with hco predict"),
    Case("compare-one-arm", ["compare", "{w}/runs/done"], "at least two arms"),
    Case("compare-json-under-file", [*COMPARE, "--json", "{w}/afile.txt/c.json"],
         "afile.txt is a file, not a folder"),
    Case("compare-glob-matches-nothing", ["compare", "x={w}/nothing*", "{w}/runs/done"],
         "matched nothing"),
    Case("compare-option-of-other-mode", ["compare", "--dynamics", "{w}/runs/done",
                                          "{w}/runs/noeval", "--holm"], "does not apply"),
    Case("compare-read-only", ["compare", "{w}/runs/done", "b={w}/runs/don*", "--json",
                               "{w}/c.json"], "Read-only file system: ", around=_read_only),
    # --------------------------------------------------------------------------- sweep
    Case("sweep-out-is-file", [*SWEEP, "--out", "{w}/afile.txt"],
         "afile.txt is a file, not a folder"),
    Case("sweep-unknown-optimizer", [*SWEEP[:4], "sgd,lion", "--seeds", "1", "--out",
                                     "{w}/sw"], "nknown optimizer 'lion'"),
    Case("sweep-bad-seeds", [*SWEEP[:6], "1,x", "--out", "{w}/sw"], "--seeds '1,x'"),
    Case("sweep-lcc-without-evaluate", [*SWEEP, "--out", "{w}/sw", "--lcc"],
         "--lcc applies to --evaluate"),
    Case("sweep-read-only", [*SWEEP, "--out", "{w}/sw"], "Read-only file system: ",
         around=_read_only),
    Case("sweep-locked", [*SWEEP, "--out", "{w}/runs"], "is in use by process 4242",
         around=_lock("runs")),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return world.build(tmp_path_factory.mktemp("bad-input"))


@contextlib.contextmanager
def _around(case: Case, w: Path, mp: pytest.MonkeyPatch) -> Iterator[None]:
    if case.around is None:
        yield
        return
    with case.around(w, mp):
        yield


def test_the_matrix_covers_every_command() -> None:
    commands = {c.args[0] for c in CASES}
    assert commands == {"prepare", "train", "predict", "evaluate", "compare", "sweep", "export"}
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, workspace: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    args = [a.replace("{w}", str(workspace)) for a in case.args]
    with monkeypatch.context() as mp, _around(case, workspace, mp):
        before = world.snapshot(workspace)
        result = runner.invoke(app, args, env={"COLUMNS": "80", **case.env})
        after = world.snapshot(workspace)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert case.message in lines[0], lines[0]
    assert result.stdout.strip() == "", result.stdout
    assert after == before
    assert HELD_ENV not in os.environ
