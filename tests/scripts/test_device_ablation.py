"""scripts/device_ablation.sh's ``partial`` verb on a constructed sweep folder: while a batch
still runs, the runs already done come back (so that a machine taken back mid-batch loses only
the unfinished one), without weights, and a running run's resume checkpoint is not scored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None,
                                reason="needs bash and tar")


def _run(root: Path, arm: str, run: str, state: str, *, scored: bool) -> Path:
    folder = root / arm / run
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"weights")
    (folder / "run.json").write_text(json.dumps({"seed": 3}), encoding="utf-8")
    if scored:
        for which in ("best", "last", "best-test"):
            (folder / "eval" / which).mkdir(parents=True)
            (folder / "eval" / which / "summary.json").write_text("{}", encoding="utf-8")
    (root / "_configs" / arm).mkdir(parents=True, exist_ok=True)
    (root / "_configs" / arm / f"{run}.yaml").write_text("seed: 3\n", encoding="utf-8")
    (root / "_jobs" / arm).mkdir(parents=True, exist_ok=True)
    (root / "_jobs" / arm / f"{run}.state.json").write_text(
        json.dumps({"job_id": "x", "state": state}, indent=2), encoding="utf-8")
    (root / "_jobs" / arm / f"{run}.submitted.json").write_text("{}", encoding="utf-8")
    return folder


def _partial(tmp_path: Path, runs: Path) -> subprocess.CompletedProcess[str]:
    """The verb, with a ``python3`` on PATH that only records its arguments (in calls.txt)."""
    site = tmp_path / "site"
    (site / "pydantic").mkdir(parents=True, exist_ok=True)  # the wheels count as installed
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls.txt"}\n', encoding="utf-8")
    fake.chmod(0o755)
    env = {**os.environ, "SITE": str(site), "RUNS": str(runs), "OUT": str(out),
           "THEN_RUNS": str(tmp_path / "absent"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "scripts/device_ablation.sh", "partial"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_partial_packs_the_done_runs_only(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    _run(runs, "sgd-co", "all-s3", "done", scored=True)
    # the next run of the chain, mid-training: its last.pt is a resume checkpoint
    _run(runs, "hco-r3", "all-s1", "running", scored=False)
    (runs / "sweep.log").write_text("log\n", encoding="utf-8")
    done = _partial(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    tarball = tmp_path / "out" / "ablation-partial.tar.gz"
    with tarfile.open(tarball) as archive:
        names = {n.removeprefix("./") for n in archive.getnames()}
    assert "sgd-co/all-s3/run.json" in names
    assert "sgd-co/all-s3/eval/best-test/summary.json" in names
    assert {"_configs/sgd-co/all-s3.yaml", "_jobs/sgd-co/all-s3.state.json",
            "_jobs/sgd-co/all-s3.submitted.json", "sweep.log"} <= names
    assert not any(n.endswith(".pt") for n in names)
    assert not any("hco-r3" in n for n in names)
    # a running run is not scored (no hco predict on its resume checkpoint)
    assert not (tmp_path / "calls.txt").exists()


def test_partial_scores_a_done_run_missing_its_last_iterate(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    folder = _run(runs, "sgd-co", "all-s3", "done", scored=True)
    shutil.rmtree(folder / "eval" / "last")
    _run(runs, "hco-r3", "all-s1", "running", scored=False)
    done = _partial(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text(encoding="utf-8").splitlines()
    assert calls == [f"-m hco_cli predict {folder}/ --checkpoint last --split test --lcc "
                     "--evaluate --force"]


def test_partial_writes_nothing_before_a_run_is_done(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    _run(runs, "sgd-co", "all-s3", "running", scored=False)
    done = _partial(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "out").iterdir()) == []
