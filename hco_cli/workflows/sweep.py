"""Running a sweep's plan on this machine: one run after another in this process, or
``python -m hco_cli train --config FILE`` subprocesses on several GPUs (``runs_per_gpu`` at a
time on each), dependents started once their shared pre-training run exited 0.

The plan (:mod:`hco_cli.workflows.sweep_plan`) is re-exported here; the Slurm executor is
:mod:`hco_cli.workflows.sweep_submit`. Each run's state is recorded under ``OUT/_jobs`` as it
goes, for ``hco sweep --status``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from hco_cli.errors import ConfigError, HcoError
from hco_cli.inference.predict import PredictOptions, predict
from hco_cli.io_utils import write_text
from hco_cli.processes import PARENT_ENV, libc_prctl, signal_on_parent_death
from hco_cli.runs.layout import RunFolder
from hco_cli.training.entry import resume, train
from hco_cli.training.presets import build_config
from hco_cli.workflows.sweep_plan import (
    Arm,
    PlanStatus,
    SweepOptions,
    SweepRun,
    compare_command,
    load_arms,
    needs_evaluation,
    plan_sweep,
    resolve_runs_per_gpu,
    run_status,
    write_plan,
)
from hco_cli.workflows.sweep_status import (
    PRETRAIN_ARM,
    JobState,
    read_json,
    record_state,
    record_submission,
    summary_path,
)
from hco_cli.workflows.sweep_status import log_path as run_log_path

Outcome = Literal["skipped", "resumed", "trained", "failed"]

TRACEBACK_FILE = "traceback.txt"  # in a run folder: its unexpected error, whole


@dataclass
class RunOutcome:
    """What happened to one run, read back from its run.json and eval summary."""

    run: SweepRun
    outcome: Outcome
    message: str = ""
    best_dice: float | None = None
    wall_seconds: float | None = None
    test_dice: float | None = None  # mean over classes of summary.json's mean Dice


@dataclass
class SweepReport:
    """Every run's outcome and the ``hco compare`` command that reads the sweep."""

    out: Path
    outcomes: list[RunOutcome]
    compare_command: str

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]


SweepProgress = Callable[[str, SweepRun], None]
"""Called as ``progress(action, run)`` before each run is trained, resumed or evaluated."""


class Job(Protocol):
    """A launched run: ``poll()`` is None while it works, then its exit code; ``stop()``
    interrupts it (as Ctrl-C) and ``wait_stopped(deadline)`` waits for that, then ends it."""

    def poll(self) -> int | None: ...

    def stop(self) -> None: ...

    def wait_stopped(self, deadline: float) -> None: ...


# How long the runs of an interrupted sweep get to save their state before they are ended.
STOP_GRACE_SECONDS = 60.0


Launcher = Callable[[SweepRun, int], Job]
"""Starts ``run`` on worker slot ``index`` and returns its job."""

# ------------------------------------------------------------------------------ execute
def run_sweep(options: SweepOptions, *, progress: SweepProgress | None = None,
              launch: Launcher | None = None, poll_seconds: float = 5.0) -> SweepReport:
    """Plan the grid and bring every run to finished (and evaluated, if asked), here."""
    if options.executor != "local":
        raise ConfigError(f"run_sweep runs the local executor; --executor {options.executor} "
                          "jobs are submitted by sweep_submit.submit_sweep")
    runs = plan_sweep(options)
    write_plan(runs)
    workers = options.gpus * resolve_runs_per_gpu(options, runs)[0]
    if workers > 1:
        launcher = launch or SubprocessLauncher(options)
        codes = schedule(runs, workers=workers, launch=launcher,
                         needs_work=lambda r: r.status != "done" or needs_evaluation(r, options),
                         wait=lambda: time.sleep(poll_seconds))
        outcomes = [_outcome_from_code(r, codes.get(r.run_dir), options) for r in runs]
    else:
        outcomes = _run_in_process(runs, options, progress or (lambda action, run: None))
    return SweepReport(out=Path(options.out), outcomes=outcomes,
                       compare_command=compare_command(runs, options.out))


def _run_in_process(runs: list[SweepRun], options: SweepOptions,
                    progress: SweepProgress) -> list[RunOutcome]:
    """Run the grid one after another in this process; a failed base fails its dependents."""
    failed: set[Path] = set()
    outcomes = []
    done: dict[PlanStatus, Outcome] = {"done": "skipped", "resume": "resumed", "new": "trained"}
    for run in runs:
        if run.init_from is not None and run.init_from in failed:
            outcomes.append(RunOutcome(run, "failed", f"base run {run.init_from} failed"))
            failed.add(run.run_dir)
            continue
        if run.status == "done" and not needs_evaluation(run, options):
            outcomes.append(_read_outcome(run, "skipped"))
            continue
        end = started(run, options, executor="local")
        try:
            if run.status == "resume":
                progress("resume", run)
                resume(run.run_dir)
            elif run.status == "new":
                progress("train", run)
                # No last.pt: whatever an earlier attempt left holds nothing to resume.
                train(build_config(config_file=run.config_file), force=True)
        except HcoError as exc:
            failed.add(run.run_dir)
            outcomes.append(_read_outcome(run, "failed", end(str(exc))))
            continue
        except KeyboardInterrupt:
            end("interrupted", interrupted=True)
            raise
        except Exception as exc:  # one run's crash must not end the sweep
            failed.add(run.run_dir)
            outcomes.append(_read_outcome(run, "failed", end(_crashed(run, exc))))
            continue
        try:
            if needs_evaluation(run, options):
                progress("evaluate", run)
                preds = RunFolder(run.run_dir).predictions("best")
                predict(run.run_dir, PredictOptions(split="test", evaluate=True, lcc=options.lcc,
                                                    device=run.config.device,
                                                    force=preds.exists()))
        except HcoError as exc:  # trained, so dependents may still use its pretrain.pt
            outcomes.append(_read_outcome(run, "failed", end(f"evaluation: {exc}")))
            continue
        except KeyboardInterrupt:
            end("interrupted", interrupted=True)
            raise
        except Exception as exc:  # as above: recorded, the sweep goes on
            outcomes.append(_read_outcome(run, "failed",
                                          end(f"evaluation: {_crashed(run, exc)}")))
            continue
        end(None)
        outcomes.append(_read_outcome(run, done[run.status]))
    return outcomes


def _crashed(run: SweepRun, exc: Exception) -> str:
    """The one line a run's unexpected error leaves in the sweep's table and state; its
    traceback goes to ``RUN/traceback.txt`` (where the run folder exists) for a bug report."""
    line = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if run.run_dir.is_dir():
        write_text(run.run_dir / TRACEBACK_FILE, traceback.format_exc())
        return f"{line} (traceback in {run.run_dir / TRACEBACK_FILE})"
    return line


class RunEnd(Protocol):
    """Records how a run started by :func:`started` ended; returns the message."""

    def __call__(self, message: str | None, *, interrupted: bool = False) -> str: ...


def started(run: SweepRun, options: SweepOptions, *, executor: str,
            log: Path | None = None) -> RunEnd:
    """Record that ``run`` starts now (for ``hco sweep --status``); return the function that
    records its end: ``end(None)`` when done, ``end(message)`` when it failed,
    ``end(message, interrupted=True)`` when Ctrl-C stopped it."""
    job_id = uuid.uuid4().hex[:12]
    out, arm, name = options.out, run.arm, run.run_dir.name
    record_submission(out, arm, name, executor=executor, job_id=job_id, log=log,
                      evaluate=options.evaluate and arm != PRETRAIN_ARM)
    record_state(out, arm, name, job_id=job_id, state="running")

    def end(message: str | None, *, interrupted: bool = False) -> str:
        state: JobState = ("interrupted" if interrupted else "done" if message is None
                           else "failed")
        record_state(out, arm, name, job_id=job_id, state=state, message=message or "")
        return message or ""

    return end


def _read_outcome(run: SweepRun, outcome: Outcome, message: str = "") -> RunOutcome:
    info = read_json(RunFolder(run.run_dir).run_json)
    best = info.get("best") or {}
    summary = read_json(summary_path(run.run_dir))
    means = [v for v in (summary.get("mean") or {}).values() if isinstance(v, dict)]
    dice = [float(m["dice"]) for m in means if isinstance(m.get("dice"), (int, float))]
    return RunOutcome(run=run, outcome=outcome, message=message,
                      best_dice=best.get("score"), wall_seconds=info.get("wall_seconds"),
                      test_dice=sum(dice) / len(dice) if dice else None)


def _outcome_from_code(run: SweepRun, code: int | None, options: SweepOptions) -> RunOutcome:
    log = log_path(options.out, run)
    if code is None and run.status == "done" and not needs_evaluation(run, options):
        return _read_outcome(run, "skipped")
    if code is None:
        return _read_outcome(run, "failed", f"not started: base run {run.init_from} failed")
    if code != 0:
        return _read_outcome(run, "failed", f"exit code {code}; see {log}")
    done: dict[PlanStatus, Outcome] = {"done": "skipped", "resume": "resumed", "new": "trained"}
    return _read_outcome(run, done[run.status])


# ---------------------------------------------------------------------- multi-GPU path
def schedule(runs: Sequence[SweepRun], *, workers: int, launch: Launcher,
             needs_work: Callable[[SweepRun], bool],
             wait: Callable[[], None]) -> dict[Path, int | None]:
    """Run jobs on ``workers`` slots, in grid order, each dependent after its base finished.

    A dependent is ready once its base (the shared pre-training run) exited 0 in this sweep or
    had finished before it; if the base fails, the dependent is never started (code None).
    Returns each launched run's exit code.
    """
    by_dir = {r.run_dir: r for r in runs}
    pending = [r for r in runs if needs_work(r)]
    codes: dict[Path, int | None] = {}
    running: dict[int, tuple[SweepRun, Job]] = {}
    launched: set[Path] = set()
    try:
        _schedule_loop(runs, by_dir, pending, codes, running, launched, workers=workers,
                       launch=launch, wait=wait)
    except BaseException:
        # Ctrl-C, or SIGTERM turned into it by hco sweep: stop the runs this sweep started
        # (each saves where it stopped, as on Ctrl-C), so none goes on unseen after the sweep.
        jobs = [job for _, job in running.values()]
        for job in jobs:
            job.stop()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for job in jobs:
            job.wait_stopped(deadline)
        raise
    return codes


def _schedule_loop(runs: Sequence[SweepRun], by_dir: dict[Path, SweepRun],
                   pending: list[SweepRun], codes: dict[Path, int | None],
                   running: dict[int, tuple[SweepRun, Job]], launched: set[Path], *,
                   workers: int, launch: Launcher, wait: Callable[[], None]) -> None:
    while pending or running:
        for slot, (run, job) in list(running.items()):
            code = job.poll()
            if code is not None:
                codes[run.run_dir] = code
                del running[slot]
        for run in list(pending):
            base = by_dir.get(run.init_from) if run.init_from is not None else None
            state = "ready" if base is None else _base_state(base, codes, launched)
            if state == "failed":
                pending.remove(run)
                codes[run.run_dir] = None
            elif state == "ready":
                free = [s for s in range(workers) if s not in running]
                if not free:
                    break
                pending.remove(run)
                launched.add(run.run_dir)
                running[free[0]] = (run, launch(run, free[0]))
        if running:
            wait()
        elif pending:  # cannot happen: every base precedes its dependents in grid order
            raise HcoError(f"sweep: {pending[0].run_dir} waits for a base that never runs")


def _base_state(base: SweepRun, codes: dict[Path, int | None],
                launched: set[Path]) -> Literal["ready", "wait", "failed"]:
    if base.run_dir in codes:
        return "ready" if codes[base.run_dir] == 0 else "failed"
    if base.run_dir not in launched:
        # Not launched in this sweep: ready only if it needs no work (finished earlier).
        return "ready" if base.status == "done" else "wait"
    return "wait"


def log_path(out: Path, run: SweepRun) -> Path:
    return run_log_path(out, run.arm, run.run_dir.name)


def train_argv(run: SweepRun, options: SweepOptions) -> list[list[str]]:
    """The ``python -m hco_cli`` commands that bring ``run`` to finished and evaluated."""
    hco = [sys.executable, "-m", "hco_cli"]
    commands = []
    if run.status == "resume":
        commands.append([*hco, "train", "--resume", str(run.run_dir)])
    elif run.status == "new":
        commands.append([*hco, "train", "--config", str(run.config_file), "--force"])
    if needs_evaluation(run, options):
        # where the run trained: its config's device (cuda with --gpus above 1; else the
        # config's own, so that runs sharing one GPU, or the CPU, evaluate where they trained)
        commands.append([*hco, "predict", str(run.run_dir), "--split", "test", "--evaluate",
                         "--device", run.config.device, "--force",
                         *(["--lcc"] if options.lcc else [])])
    return commands


class SubprocessLauncher:
    """Starts a run's commands one after another on one GPU, output appended to its log.

    Worker slot ``index`` runs on GPU ``index % gpus``, so with ``runs_per_gpu`` K each GPU
    holds K runs at a time.
    """

    def __init__(self, options: SweepOptions) -> None:
        self.options = options
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.devices = visible.split(",") if visible else [str(i) for i in range(options.gpus)]

    def __call__(self, run: SweepRun, index: int) -> Job:
        log = log_path(self.options.out, run)
        log.parent.mkdir(parents=True, exist_ok=True)
        device = self.devices[index % self.options.gpus]
        # PARENT_ENV: where the kernel has no death signal, the run watches this process
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device, PARENT_ENV: str(os.getpid())}
        end = started(run, self.options, executor="local", log=log)

        def exited(code: int, stopped: bool) -> None:
            # 130 / 143: hco's exit on Ctrl-C (the sweep's stop sends the same) / on SIGTERM; a
            # command that the stop had to terminate was interrupted too
            interrupted = code != 0 and (stopped or code in (130, 143, -signal.SIGINT))
            end(None if code == 0 else f"exit code {code}; see {log}", interrupted=interrupted)

        return _Chain(train_argv(run, self.options), env=env, log=log, on_exit=exited)


def _child_setup(parent: int, prctl: Callable[..., int] | None) -> Callable[[], None]:
    """What a run's process does before it starts (``preexec_fn``):

    - a process group of its own, so that a terminal's Ctrl-C reaches only the sweep, which
      passes exactly one SIGINT on (:meth:`_Chain.stop`; a second would interrupt the run's
      own handling of the first);
    - SIGINT at its default (a sweep started in the background hands its children SIGINT
      ignored, and Python then never turns it into KeyboardInterrupt);
    - on Linux, SIGINT when the sweep dies however it dies (``kill -9``, the OOM killer), so
      that a run does not train on unwatched but stops at its next iteration with a checkpoint
      there, as on Ctrl-C (``PR_SET_PDEATHSIG``; the sweep starts runs from its main thread,
      whose end is the process's). Elsewhere the run's ``hco`` command does the same from a
      thread once it starts (:data:`~hco_cli.processes.PARENT_ENV` in its environment)."""
    def setup() -> None:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal_on_parent_death(signal.SIGINT, parent=parent, prctl=prctl)

    return setup


_PRCTL = libc_prctl()


class _Chain:
    """Sequential subprocesses; the first non-zero exit code ends the chain."""

    def __init__(self, commands: list[list[str]], *, env: dict[str, str], log: Path,
                 on_exit: Callable[[int, bool], None] | None = None) -> None:
        self.commands, self.env, self.log = list(commands), env, log
        self.on_exit = on_exit  # with the exit code and whether stop() ended it
        self.stopped = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._next()

    def _next(self) -> None:
        command = self.commands.pop(0)
        with self.log.open("ab") as sink:
            # stdin closed: a process group other than the terminal's that read from it
            # would be stopped (SIGTTIN).
            self.proc = subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=sink, stderr=subprocess.STDOUT,
                                         preexec_fn=_child_setup(os.getpid(), _PRCTL))

    def stop(self) -> None:
        """Interrupt the running command as Ctrl-C would (a one-process hco train stops at its
        next iteration with a checkpoint there); start no other."""
        self.commands = []
        if self.proc is not None and self.proc.poll() is None:
            self.stopped = True
            self._signal_group(signal.SIGINT)

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the interrupted command until ``deadline`` (``time.monotonic()``), then
        terminate it; record its exit code."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGTERM)
            self.proc.wait()
        if self.on_exit is not None:
            self.on_exit(self.proc.returncode, self.stopped)
            self.on_exit = None

    def _signal_group(self, signum: int) -> None:
        """``signum`` to the command and every process it started (its training workers), as
        a terminal's Ctrl-C reaches them all: they share the process group the command
        opened (:func:`_child_setup`)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
            os.killpg(self.proc.pid, signum)

    def poll(self) -> int | None:
        assert self.proc is not None  # set in __init__
        code = self.proc.poll()
        if code == 0 and self.commands:
            self._next()
            return None
        if code is not None and self.on_exit is not None:
            self.on_exit(code, self.stopped)
            self.on_exit = None
        return code


__all__ = ["Arm", "RunOutcome", "SubprocessLauncher", "SweepOptions", "SweepReport", "SweepRun",
           "compare_command", "load_arms", "needs_evaluation", "plan_sweep",
           "resolve_runs_per_gpu", "run_status", "run_sweep", "schedule", "started",
           "train_argv", "write_plan"]
