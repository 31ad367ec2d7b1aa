"""Sweeps as jobs: submitit's local executor end to end, Slurm through a fake sbatch, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from hco_cli.config import SlurmConfig, slurm_minutes
from hco_cli.errors import CheckpointError, ConfigError
from hco_cli.locks import hold, lock_path
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.training.events import ProgressEvent
from hco_cli.training.logging import read_metrics
from hco_cli.workflows.sweep import SweepOptions, plan_sweep, run_sweep
from hco_cli.workflows.sweep_status import (
    record_state,
    record_submission,
    run_state,
    sweep_status,
)
from hco_cli.workflows.sweep_submit import (
    LocalSubmitter,
    Submitted,
    SweepJob,
    slurm_parameters,
    submit_sweep,
)
from tests.workflows.test_sweep import tiny_dataset, write_tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("submit")
    return write_tiny_config(tiny_dataset(root), root / "tiny.yaml")


def _grid(config: Path, out: Path, **changes: Any) -> SweepOptions:
    """2 arms x 2 seeds sharing each seed's pre-training: 6 runs."""
    return SweepOptions(**{"config": config, "optimizers": ["sgd", "sgd-hco"], "seeds": [1, 2],
                           "out": out, "share_pretraining": True, **changes})


# ------------------------------------------------------------------ submitit, local jobs
class KillAt:
    """A job's progress hook: SIGKILL its own process at a step, as a node failure would."""

    def __init__(self, phase: str, iteration: int) -> None:
        self.phase, self.iteration = phase, iteration

    def __call__(self, event: ProgressEvent) -> None:
        if (event.kind, event.phase, event.iteration) == ("step", self.phase, self.iteration):
            os.kill(os.getpid(), signal.SIGKILL)


class Interrupting(LocalSubmitter):
    """Local jobs, two of which are killed part-way (a base and a dependent)."""

    kills: ClassVar[dict[tuple[str, str], KillAt]] = {
        ("_pretrain", "all-s2"): KillAt("pretrain", 2),
        ("sgd-hco", "all-s1"): KillAt("selftrain", 2)}

    def submit(self, job: SweepJob, resources: SlurmConfig, *,
               after: Any) -> Submitted | None:
        hook = self.kills.get((job.arm, job.run_dir.name))
        return super().submit(replace(job, progress=hook), resources, after=after)


def _states(out: Path) -> dict[str, str]:
    return {f"{s.arm}/{s.name}": s.state for s in sweep_status(out)}


def _networks(run_dir: Path) -> dict[str, torch.Tensor]:
    nets = load_checkpoint(run_dir / "checkpoints" / "last.pt")["framework"]["networks"]
    return {f"{n}/{k}": v for n, sd in nets.items() for k, v in sd.items()}


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One CPU thread here and in every job: results equal by construction, and no threads
    spinning against each other on a loaded machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_interrupted_submitit_sweep_resumes_to_the_uninterrupted_results(
        config: Path, tmp_path: Path, one_thread: None) -> None:
    reference = run_sweep(_grid(config, tmp_path / "ref"))  # in this process, uninterrupted
    options = _grid(config, tmp_path / "sw", executor="submitit-local")
    folder = tmp_path / "sw" / "_logs" / "submitit"

    first = submit_sweep(options, submitter=Interrupting(folder))
    actions = {f"{s.run.arm}/{s.run.run_dir.name}": s.action for s in first}
    assert actions == {"_pretrain/all-s1": "submitted", "sgd/all-s1": "submitted",
                       "sgd-hco/all-s1": "submitted", "_pretrain/all-s2": "submitted",
                       "sgd/all-s2": "held", "sgd-hco/all-s2": "held"}
    by_run = {f"{s.run.arm}/{s.run.run_dir.name}": s for s in first}
    assert by_run["sgd/all-s1"].after == (by_run["_pretrain/all-s1"].job_id,)
    assert _states(options.out) == {
        "_pretrain/all-s1": "done", "sgd/all-s1": "done", "sgd-hco/all-s1": "failed",
        "_pretrain/all-s2": "failed", "sgd/all-s2": "pending", "sgd-hco/all-s2": "pending"}
    killed = run_state(options.out, "sgd-hco", "all-s1")
    assert killed.detail.startswith("the job ended without finishing: ")
    assert [r.status for r in plan_sweep(options)] == ["done", "done", "resume",
                                                       "resume", "new", "new"]
    finished = {p: p.stat().st_mtime_ns for p in options.out.glob("*/all-s1/run.json")
                if "sgd-hco" not in str(p)}

    second = submit_sweep(options)  # resubmits the unfinished runs only
    assert [s.action for s in second] == ["done", "done", "submitted", "submitted",
                                          "submitted", "submitted"]
    assert second[4].after == (second[3].job_id,)  # the new pre-training job
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert set(_states(options.out).values()) == {"done"}

    for outcome in reference.outcomes:
        ref_dir = outcome.run.run_dir
        run_dir = options.out / ref_dir.relative_to(tmp_path / "ref")
        a, b = _networks(ref_dir), _networks(run_dir)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (run_dir, key)
        ma, mb = read_metrics(ref_dir / "metrics.jsonl"), read_metrics(run_dir / "metrics.jsonl")
        assert [(m["iter"], m.get("loss_l"), m.get("dice")) for m in ma] == [
            (m["iter"], m.get("loss_l"), m.get("dice")) for m in mb]
        info = json.loads((run_dir / "run.json").read_text())
        assert info["best"]["score"] == outcome.best_dice and info["finished"] is True


# ---------------------------------------------------------------- Slurm, a fake sbatch
FAKE_SBATCH = """#!/bin/sh
n=$(($(cat "$FAKE_SLURM/count" 2>/dev/null || echo 100) + 1))
echo $n > "$FAKE_SLURM/count"
cp "$1" "$FAKE_SLURM/job-$n.sh"
echo "Submitted batch job $n"
"""
# sacct answers from $FAKE_SLURM/states (lines "ID|STATE"); others are unknown to it.
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/states" 2>/dev/null
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    record = tmp_path / "slurm"
    (record / "bin").mkdir(parents=True)
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("srun", "#!/bin/sh\n")):
        path = record / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{record / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(record))
    return record


def _sbatch_lines(script: Path) -> set[str]:
    return {line for line in script.read_text().splitlines() if line.startswith("#SBATCH")}


def test_slurm_jobs_carry_resources_and_afterok_dependencies(config: Path, tmp_path: Path,
                                                             fake_slurm: Path) -> None:
    options = _grid(config, tmp_path / "sw", executor="slurm", seeds=[1], log=["tensorboard"],
                    slurm={"partition": "gpu", "time": "4:00:00", "mem": "32g",
                           "gpus_per_run": 2})
    submissions = submit_sweep(options)
    assert [(s.action, s.job_id, s.after) for s in submissions] == [
        ("submitted", "101", ()), ("submitted", "102", ("101",)),
        ("submitted", "103", ("101",))]
    pretrain, arm, _ = (_sbatch_lines(fake_slurm / f"job-{n}.sh") for n in (101, 102, 103))
    common = {"#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --mem=32G",
              "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8",
              "#SBATCH --kill-on-invalid-dep=yes"}
    assert common <= pretrain and common <= arm
    assert "#SBATCH --job-name=hco-_pretrain-all-s1" in pretrain
    assert not any("--dependency" in line for line in pretrain)
    assert "#SBATCH --dependency=afterok:101" in arm
    # the plan's config files hold what every job trains: 2 GPUs data-parallel, tensorboard
    planned = submissions[1].run.config
    assert planned.distributed.processes == 2 and planned.tracking.sinks == ["tensorboard"]
    assert planned.slurm.partition == "gpu" and planned.slurm.minutes == 240
    assert {s.state for s in sweep_status(options.out)} == {"pending"}

    # Submitted again while Slurm still holds the jobs: nothing new is submitted.
    (fake_slurm / "states").write_text("101|RUNNING|n1\n102|PENDING|\n103|PENDING|\n")
    record_state(options.out, "_pretrain", "all-s1", job_id="101", state="running")
    again = submit_sweep(options)
    assert [(s.action, s.job_id) for s in again] == [("queued", "101"), ("queued", "102"),
                                                     ("queued", "103")]
    assert (fake_slurm / "count").read_text().strip() == "103"

    # The pre-training job fails; Slurm cancels its dependents: all three go again.
    (fake_slurm / "states").write_text("101|FAILED|n1\n102|CANCELLED by 0|\n"
                                       "103|CANCELLED by 0|\n")
    record_state(options.out, "_pretrain", "all-s1", job_id="101", state="failed",
                 message="training diverged")
    assert sweep_status(options.out)[0].detail == "training diverged"
    third = submit_sweep(options)
    assert [(s.action, s.job_id, s.after) for s in third] == [
        ("submitted", "104", ()), ("submitted", "105", ("104",)),
        ("submitted", "106", ("104",))]
    assert {s.state for s in sweep_status(options.out)} == {"pending"}  # new jobs not started


def test_slurm_needs_srun(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                          ) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="'srun' is not on PATH"):
        submit_sweep(_grid(config, tmp_path / "sw", executor="slurm"))


def test_slurm_parameters_of_a_config_section() -> None:
    resources = SlurmConfig(partition="a100", gpus_per_run=0, time="1-12:00:00", mem="500m",
                            setup=["module load cuda"], options={"account": "lab"})
    assert slurm_parameters(resources, name="hco-x", after=["7", "8"]) == {
        "job_name": "hco-x", "time": 2160, "cpus_per_task": 8, "stderr_to_stdout": True,
        "setup": ["module load cuda"], "partition": "a100", "mem": "500M",
        "additional_parameters": {"account": "lab", "kill-on-invalid-dep": "yes"},
        "dependency": "afterok:7:8"}


@pytest.mark.parametrize(("text", "minutes"), [
    ("90", 90), ("90:30", 91), ("4:00:00", 240), ("0:00:01", 1), ("1-0", 1440),
    ("1-12:30", 2190), ("2-00:00:00", 2880)])
def test_slurm_time_limits(text: str, minutes: int) -> None:
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize(("section", "text"), [
    ({"time": "4h"}, "'4h' is not a Slurm time limit"),
    ({"time": "0"}, "is not a Slurm time limit"),
    ({"mem": "lots"}, "'lots' is not a memory size"),
    ({"gpus_per_run": -1}, "greater than or equal to 0"),
])
def test_bad_slurm_sections(config: Path, tmp_path: Path, section: dict[str, Any],
                            text: str) -> None:
    options = _grid(config, tmp_path, executor="slurm", slurm=section)
    with pytest.raises(ConfigError, match=text):
        plan_sweep(options)


@pytest.mark.parametrize(("changes", "text"), [
    ({"slurm": {"partition": "gpu"}}, "--partition applies to --executor slurm"),
    ({"executor": "slurm", "gpus": 2}, "--gpus and --runs-per-gpu apply to --executor local"),
    ({"executor": "slurm", "slurm": {"account": "x"}}, "unknown Slurm option(s) account"),
])
def test_executor_options_refused_elsewhere(config: Path, tmp_path: Path,
                                            changes: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        plan_sweep(_grid(config, tmp_path, **changes))


def test_a_job_requeues_itself() -> None:
    job = SweepJob(out=Path("o"), arm="a", run_dir=Path("o/a/all-s1"),
                   config_file=Path("o/_configs/a/all-s1.yaml"))
    delayed = job.checkpoint()
    assert delayed.function == job and delayed.args == () and delayed.kwargs == {}


# ------------------------------------------------------------------------------- status
def test_status_reads_accounts_logs_and_scheduler_ends(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    for arm in ("a", "b", "c", "d", "e"):
        (out / "_configs" / arm).mkdir(parents=True)
        (out / "_configs" / arm / "all-s1.yaml").write_text("{}")
    slurm_log = tmp_path / "slurm.out"
    slurm_log.write_text("epoch 3\nslurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-01-01 "
                         "DUE TO TIME LIMIT ***\n")
    record_submission(out, "a", "all-s1", executor="slurm", job_id="9", log=slurm_log)
    record_state(out, "a", "all-s1", job_id="9", state="running")
    record_submission(out, "b", "all-s1", executor="slurm", job_id="11")
    record_state(out, "b", "all-s1", job_id="10", state="failed", message="old failure")
    record_submission(out, "c", "all-s1", executor="slurm", job_id="12")
    record_state(out, "c", "all-s1", job_id="12", state="running")
    (out / "_logs" / "c").mkdir(parents=True)
    (out / "_logs" / "c" / "all-s1.log").write_text("start\n\x1b[1mselftrain: L 0.5\x1b[0m\r\n")
    (out / "d" / "all-s1").mkdir(parents=True)
    (out / "d" / "all-s1" / "run.json").write_text(json.dumps(
        {"finished": True, "best": {"score": 0.875}}))
    record_submission(out, "e", "all-s1", executor="slurm", job_id="13", evaluate=True)
    (out / "e" / "all-s1").mkdir(parents=True)
    (out / "e" / "all-s1" / "run.json").write_text(json.dumps({"finished": True}))
    rows = [(s.arm, s.state, s.job_id, s.detail) for s in sweep_status(out)]
    assert rows == [
        ("a", "failed", "9", "slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-01-01 DUE "
                             "TO TIME LIMIT ***"),
        ("b", "pending", "11", "submitted to slurm"),  # the failure was an earlier job's
        ("c", "running", "12", "selftrain: L 0.5"),
        ("d", "done", None, "best dice 0.8750"),
        ("e", "pending", "13", "submitted to slurm")]  # finished, but not yet evaluated
    with pytest.raises(CheckpointError, match="holds no sweep plan"):
        sweep_status(tmp_path / "nothing")


def test_status_needs_no_torch() -> None:
    code = ("import sys; import hco_cli.workflows.sweep_status as s; "
            "print(sorted(m for m in ('torch', 'numpy', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_a_local_run_whose_process_died_is_not_reported_running(tmp_path: Path) -> None:
    """A local sweep killed mid-run (SIGTERM) leaves state.json saying running and the run's
    lock file unheld: --status says it stopped, not that it runs; while a process holds the
    lock, it runs; a run on Slurm (the lock is another node's) is not judged by it."""
    out = tmp_path / "sw"
    for arm in ("local", "slurm"):
        (out / "_configs" / arm).mkdir(parents=True)
        (out / "_configs" / arm / "all-s1.yaml").write_text("{}")
        (out / arm / "all-s1").mkdir(parents=True)
    record_submission(out, "local", "all-s1", executor="local", job_id="4242")
    record_state(out, "local", "all-s1", job_id="4242", state="running")
    record_submission(out, "slurm", "all-s1", executor="slurm", job_id="9")
    record_state(out, "slurm", "all-s1", job_id="9", state="running")
    with hold(out / "local" / "all-s1"), hold(out / "slurm" / "all-s1"):
        assert [s.state for s in sweep_status(out)] == ["running", "running"]
    for arm in ("local", "slurm"):  # what a killed holder leaves: the file, unlocked
        lock_path(out / arm / "all-s1").write_text("4242\n")
    local, slurm = sweep_status(out)
    assert (local.state, slurm.state) == ("failed", "running")
    assert local.detail.startswith("stopped: no process holds the run any more")
