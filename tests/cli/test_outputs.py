"""What hco may replace, what it leaves behind, and who may read it.

Regression tests of the data-loss reports: ``--force`` replaced a training run with a dataset,
a folder of notes with a dataset, and moved a user's file aside before failing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.io_utils import atomic_dir
from hco_cli.locks import lock_path
from hco_cli.outputs import MARKER, read_marker
from tests.cli import world

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SYN = ["prepare", "synthetic", "--shape", "32,32,16", "--labeled", "2", "--unlabeled", "1",
       "--test", "2", "--val", "1", "--classes", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return world.build(tmp_path_factory.mktemp("outputs"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_force_does_not_replace_a_training_run_with_a_dataset(workspace: Path,
                                                               tmp_path: Path) -> None:
    run = tmp_path / "demo-sgd"
    shutil.copytree(workspace / "runs" / "done", run)
    before = _files(run)
    result = runner.invoke(app, [*SYN, "--out", str(run), "--force"])
    assert result.exit_code == 1 and "holds an hco run, not a dataset" in result.stderr
    assert _files(run) == before and (run / "checkpoints" / "last.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-sgd"]


def test_force_does_not_replace_a_folder_of_notes(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.md").write_text("keep me\n", encoding="utf-8")
    result = runner.invoke(app, [*SYN, "--out", str(notes), "--force"])
    assert result.exit_code == 1 and "was not written by hco" in result.stderr
    assert _files(notes) == {"plan.md": b"keep me\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_force_does_not_move_a_file_aside(tmp_path: Path) -> None:
    target = tmp_path / "afile.txt"
    target.write_text("mine\n", encoding="utf-8")
    result = runner.invoke(app, [*SYN, "--out", str(target), "--force"])
    assert result.exit_code == 1 and "is a file" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"]  # no .afile.txt.old
    assert target.read_text(encoding="utf-8") == "mine\n"


def test_force_replaces_what_hco_wrote(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert runner.invoke(app, [*SYN, "--out", str(out)]).exit_code == 0
    assert read_marker(out) == "dataset"
    (out / "cases" / "stale.npy").write_bytes(b"x")
    result = runner.invoke(app, [*SYN, "--out", str(out), "--force", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert not (out / "cases" / "stale.npy").exists() and read_marker(out) == "dataset"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_train_force_replaces_only_a_run(workspace: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    shutil.copytree(workspace / "data" / "syn", dataset)
    config = world.write_config(tmp_path / "c.yaml", world.tiny_raw(dataset, dataset))
    result = runner.invoke(app, ["train", "--config", str(config), "--force"])
    assert result.exit_code == 1 and "holds an hco dataset, not a run" in result.stderr
    assert (dataset / "dataset.json").is_file() and read_marker(dataset) == "dataset"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _not_group_readable(root: Path) -> list[str]:
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        need = stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP if path.is_dir() else 0)
        if mode & need != need:
            bad.append(f"{path.relative_to(root.parent)} {oct(mode & 0o777)}")
    return bad


def test_outputs_follow_the_umask(workspace: Path, tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    assert runner.invoke(app, [*SYN, "--out", str(data)]).exit_code == 0
    config = world.write_config(tmp_path / "c.yaml", world.tiny_raw(data, tmp_path / "run"))
    assert runner.invoke(app, ["train", "--config", str(config)]).exit_code == 0
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), "--device", "cpu",
                                 "--evaluate"])
    assert result.exit_code == 0, result.output
    preds = tmp_path / "run" / "eval" / "best" / "preds"
    result = runner.invoke(app, ["evaluate", str(preds), str(data), "--csv",
                                 str(tmp_path / "e" / "per_case.csv")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "run"), str(workspace / "runs" / "done"),
                                 "--json", str(tmp_path / "c" / "c.json")])
    assert result.exit_code == 0, result.output
    for root in (data, tmp_path / "run", tmp_path / "e", tmp_path / "c"):
        assert _not_group_readable(root) == [], root
    assert stat.S_IMODE((tmp_path / "run" / "checkpoints" / "last.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE(preds.stat().st_mode) == 0o755


def test_stale_temporaries_of_a_killed_prepare_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "la"
    killed = tmp_path / ".la.k1ll3d_x.tmp"  # what SIGKILL left: a half-written dataset
    (killed / "cases").mkdir(parents=True)
    (killed / "cases" / "big.npy").write_bytes(b"0" * 1000)
    other = tmp_path / ".la.v2.abcdefgh.tmp"  # another output's (la.v2) temporary: kept
    other.mkdir()
    prepare_synthetic(out, labeled=2, unlabeled=0, val=0, test=1, shape=(16, 16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".la.v2.abcdefgh.tmp", "la"]


def test_an_interrupted_replacement_is_put_back(tmp_path: Path) -> None:
    """Killed between moving the old output aside and moving the new one in: the old one
    comes back before the next write."""
    out = tmp_path / "preds"
    with atomic_dir(out, kind="predictions") as tmp:
        (tmp / "a.nii.gz").write_bytes(b"old")
    os.replace(out, tmp_path / ".preds.old")
    with pytest.raises(RuntimeError), atomic_dir(out, kind="predictions"):
        assert (out / "a.nii.gz").read_bytes() == b"old"
        raise RuntimeError
    assert (out / "a.nii.gz").read_bytes() == b"old" and (out / MARKER).is_file()


def test_a_second_writer_is_told_the_holder_pid(workspace: Path, tmp_path: Path) -> None:
    """Two processes on one run folder: the second exits with one line naming the first."""
    run = tmp_path / "run"
    shutil.copytree(workspace / "runs" / "locked", run)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from hco_cli.locks import hold\n"
         "with hold(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["train", "--resume", str(run)])
        assert result.exit_code == 1
        assert f"{run} is in use by process {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock with the process: the next command takes it over.
    assert lock_path(run).read_text().strip() == str(holder.pid)
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert not lock_path(run).exists()
    # The copy was resumed where it is, not in the folder it was copied from.
    assert (run / "run.json").read_text().count('"finished": true') == 1
    assert '"finished": false' in (workspace / "runs" / "locked" / "run.json").read_text()
