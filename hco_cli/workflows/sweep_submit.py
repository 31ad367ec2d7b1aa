"""``hco sweep --executor slurm``: one Slurm job per run, submitted through submitit.

The sweep's plan (:mod:`hco_cli.workflows.sweep_plan`) is the single source: every job trains
its run's resolved config file, with the Slurm resources of that file's ``slurm`` section. A
run that shares pre-training becomes a job that depends on the pre-training job
(``--dependency=afterok``, ``--kill-on-invalid-dep=yes``); submission returns at once and
``hco sweep --status OUT`` follows the jobs through the files they write. Submitting again
submits only unfinished runs and leaves those whose job is still queued or running alone.

A job brings its run to finished whatever it finds (a finished run is skipped, a ``last.pt`` is
resumed), so a job that Slurm requeues (preemption, or the time limit: submitit then calls
:meth:`SweepJob.checkpoint`) continues from the last checkpoint. ``--executor submitit-local``
runs the same jobs on this machine through submitit's local executor (no ``sbatch``): it has no
job dependencies, so a dependent is submitted once its base job ended well, and the sweep
waits for every job.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from hco_cli.config import SlurmConfig
from hco_cli.errors import ConfigError, HcoError, Interrupted, MissingExtraError
from hco_cli.inference.predict import PredictOptions, predict
from hco_cli.runs.layout import RunFolder
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressCallback, ProgressEvent
from hco_cli.training.presets import build_config
from hco_cli.workflows.sweep_plan import (
    SweepOptions,
    SweepRun,
    needs_evaluation,
    plan_sweep,
    run_status,
    write_plan,
)
from hco_cli.workflows.sweep_status import (
    LOG_DIR,
    PRETRAIN_ARM,
    last_line,
    log_path,
    record_state,
    record_submission,
    run_state,
    summary_path,
)

# Slurm states of a job that will still run (sacct's names).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                 "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}


# ------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class SweepJob:
    """What one job runs: bring a run to finished (and evaluated), writing its log and state.

    ``progress`` (picklable) also receives the run's progress events; tests interrupt a job
    through it.
    """

    out: Path
    arm: str
    run_dir: Path
    config_file: Path
    evaluate: bool = False
    lcc: bool = False
    progress: ProgressCallback | None = None

    def __call__(self) -> str:
        job_id, name = _job_id(), self.run_dir.name
        record_state(self.out, self.arm, name, job_id=job_id, state="running")
        log = _JobLog(log_path(self.out, self.arm, name), also=self.progress)
        log.line(f"job {job_id} on {os.uname().nodename}: {self.run_dir}")
        try:
            outcome = self._finish(log)
        except SystemExit:  # submitit requeues the job (preempted, timed out): it resumes
            log.line("requeued")
            raise
        except BaseException as exc:
            text = str(exc) if isinstance(exc, HcoError) else f"{type(exc).__name__}: {exc}"
            message = (text.splitlines() or [type(exc).__name__])[0]
            stopped = isinstance(exc, (KeyboardInterrupt, Interrupted))
            log.line(f"{'interrupted' if stopped else 'error'}: {message}")
            record_state(self.out, self.arm, name, job_id=job_id,
                         state="interrupted" if stopped else "failed", message=message)
            raise
        record_state(self.out, self.arm, name, job_id=job_id, state="done")
        log.line(f"done ({outcome})")
        return outcome

    def _finish(self, log: _JobLog) -> str:
        status = run_status(self.run_dir)
        if status == "resume":
            resume(self.run_dir, progress=log)
        elif status == "new":  # no last.pt: what an earlier attempt left holds nothing to resume
            train(build_config(config_file=self.config_file), progress=log, force=True)
        if self.evaluate and not summary_path(self.run_dir).is_file():
            log.line("evaluate the test split with best.pt")
            device = build_config(config_file=self.config_file).device
            preds = RunFolder(self.run_dir).predictions("best")
            predict(self.run_dir, PredictOptions(split="test", evaluate=True, lcc=self.lcc,
                                                 device=device, force=preds.exists()))
        return {"done": "skipped", "resume": "resumed", "new": "trained"}[status]

    def checkpoint(self) -> Any:
        """submitit's hook before a requeue: run this same job again (it resumes last.pt)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _job_id() -> str:
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # called directly, outside a submitit job
        return f"direct-{os.getpid()}"


class _JobLog:
    """Appends a line per progress event worth reading to the run's log; steps are skipped."""

    def __init__(self, path: Path, *, also: ProgressCallback | None) -> None:
        self.path, self.also = path, also
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: ProgressEvent) -> None:
        if self.also is not None:
            self.also(event)
        v = event.values
        text = {"start": f"start: {event.info.get('run_dir')}",
                "phase": f"phase {event.phase}: iteration {event.iteration} of {event.total}",
                "log": f"{event.phase}: L {_num(v.get('loss_l'))}  U {_num(v.get('loss_u'))}  "
                       f"lr {_num(v.get('lr'), '.3g')}",
                "val": f"val dice {_num(v.get('dice'))} (best {_num(v.get('best'))})",
                "warning": f"warning: {event.message}", "end": "training finished"}
        if event.kind in text:
            self.line(text[event.kind])

    def line(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def _num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


# --------------------------------------------------------------------------- submitting
class Submitted(NamedTuple):
    job_id: str
    log: Path  # the scheduler's output file of the job


class Submitter(Protocol):
    """Where jobs go: ``submit`` returns None where a base job (``after``) did not succeed."""

    kind: str

    def submit(self, job: SweepJob, resources: SlurmConfig, *,
               after: Sequence[str]) -> Submitted | None: ...

    def active(self, job_id: str) -> bool: ...

    def wait(self) -> None: ...


def slurm_parameters(resources: SlurmConfig, *, name: str,
                     after: Sequence[str] = ()) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters of one run's job."""
    params: dict[str, Any] = {
        "job_name": name, "time": resources.minutes, "cpus_per_task": resources.cpus_per_run,
        "stderr_to_stdout": True, "setup": list(resources.setup),
        "additional_parameters": {**resources.options, "kill-on-invalid-dep": "yes"}}
    if resources.gpus_per_run:
        params["gpus_per_node"] = resources.gpus_per_run
    if resources.partition:
        params["partition"] = resources.partition
    if resources.mem:
        params["mem"] = resources.mem
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
    return params


def _submitit() -> Any:
    """The submitit module, or a one-line MissingExtraError naming the pip command."""
    if importlib.util.find_spec("submitit") is None:
        raise MissingExtraError("--executor slurm needs the slurm extra (submitit is not "
                                "installed): pip install 'hco-cli[slurm]'")
    import submitit

    return submitit


class SlurmSubmitter:
    """Jobs through ``sbatch``, dependencies as ``afterok``; logs under ``folder/<job id>/``."""

    kind = "slurm"

    def __init__(self, folder: Path) -> None:
        submitit = _submitit()
        self.folder = Path(folder)
        try:
            self.executor = submitit.SlurmExecutor(folder=str(self.folder / "%j"))
        except RuntimeError:
            raise ConfigError("--executor slurm: 'srun' is not on PATH; submit from a Slurm "
                              "login node, or run the jobs here with --executor "
                              "submitit-local") from None

    def submit(self, job: SweepJob, resources: SlurmConfig, *,
               after: Sequence[str]) -> Submitted | None:
        self.executor.update_parameters(**slurm_parameters(
            resources, name=f"hco-{job.arm}-{job.run_dir.name}", after=after))
        try:
            submitted = self.executor.submit(job)
        except Exception as exc:  # sbatch refused the job (partition, account, limits)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise HcoError(f"sbatch refused the job of {job.run_dir}: {first}") from None
        return Submitted(str(submitted.job_id), Path(submitted.paths.stdout))

    def active(self, job_id: str) -> bool:
        """Whether Slurm (sacct) still lists the job as queued or running."""
        job = _submitit().SlurmJob(folder=str(self.folder / "%j"), job_id=job_id)
        try:
            state = str(job.get_info(mode="force").get("State") or "UNKNOWN")
        except Exception as exc:  # no sacct: resubmitting could train a run twice at once
            raise HcoError(f"cannot ask Slurm whether job {job_id} is still queued (sacct: "
                           f"{type(exc).__name__}); cancel it or wait, then submit again"
                           ) from None
        return state.upper().split()[0] in ACTIVE_STATES  # "CANCELLED by 123" -> CANCELLED

    def wait(self) -> None:
        """Slurm runs the jobs; the sweep returns after submitting them."""


class LocalSubmitter:
    """The same jobs on this machine through submitit's local executor (no sbatch needed).

    It knows no dependencies: ``submit`` first waits for the base jobs of ``after`` and
    submits nothing if one of them did not end with its run done. ``wait`` blocks until every
    job ended; a job that died without a word (killed) is then recorded as failed.
    """

    kind = "submitit-local"

    def __init__(self, folder: Path) -> None:
        self.executor = _submitit().LocalExecutor(folder=str(Path(folder) / "%j"))
        self.jobs: dict[str, tuple[Any, SweepJob]] = {}

    def submit(self, job: SweepJob, resources: SlurmConfig, *,
               after: Sequence[str]) -> Submitted | None:
        for job_id in after:
            if job_id in self.jobs and self._wait(job_id) != "done":
                return None
        self.executor.update_parameters(timeout_min=resources.minutes,
                                        gpus_per_node=resources.gpus_per_run)
        # Local jobs share this machine's cores; OpenMP threads that busy-wait for their
        # peers then slow every job several-fold. Passive waiting changes no result. The job
        # inherits the environment at submission, so it is set for that moment only.
        saved = os.environ.get("OMP_WAIT_POLICY")
        os.environ["OMP_WAIT_POLICY"] = saved or "PASSIVE"
        try:
            submitted = self.executor.submit(job)
        finally:
            if saved is None:
                del os.environ["OMP_WAIT_POLICY"]
        self.jobs[str(submitted.job_id)] = (submitted, job)
        return Submitted(str(submitted.job_id), Path(submitted.paths.stdout))

    def active(self, job_id: str) -> bool:
        """A local job is its controller process: alive while the job runs."""
        try:
            os.kill(int(job_id), 0)
        except (ValueError, OSError):
            return False
        return True

    def wait(self) -> None:
        for job_id in self.jobs:
            self._wait(job_id)

    def _wait(self, job_id: str) -> str:
        handle, job = self.jobs[job_id]
        while not handle.done():
            time.sleep(0.2)
        state = run_state(job.out, job.arm, job.run_dir.name)
        if state.state == "running":  # the job ended without its own account: killed
            line = last_line(handle.paths.stdout) or last_line(handle.paths.stderr)
            record_state(job.out, job.arm, job.run_dir.name, job_id=job_id, state="failed",
                         message=f"the job ended without finishing: {state.detail or line}")
            return "failed"
        return state.state


def make_submitter(options: SweepOptions) -> Submitter:
    """The submitter of ``options.executor``; jobs' scheduler logs go to OUT/_logs/submitit."""
    folder = Path(options.out) / LOG_DIR / "submitit"
    if options.executor == "slurm":
        return SlurmSubmitter(folder)
    if options.executor == "submitit-local":
        return LocalSubmitter(folder)
    raise ConfigError(f"--executor {options.executor} runs in hco sweep itself, not as jobs")


@dataclass(frozen=True)
class Submission:
    """What the sweep did with one run: submitted it (after its base job), found its job still
    queued, found it done, or held it back because its base could not be submitted or failed."""

    run: SweepRun
    action: Literal["submitted", "queued", "done", "held"]
    job_id: str | None = None
    after: tuple[str, ...] = ()


def submit_sweep(options: SweepOptions, *,
                 submitter: Submitter | None = None) -> list[Submission]:
    """Plan the grid, write its config files and submit a job for every unfinished run."""
    _submitit()
    runs = plan_sweep(options)
    write_plan(runs)
    submitter = submitter or make_submitter(options)
    todo = [r for r in runs if r.status != "done" or needs_evaluation(r, options)]
    unfinished = {r.run_dir for r in todo}
    jobs: dict[Path, str] = {}
    done: dict[Path, Submission] = {r.run_dir: Submission(r, "done") for r in runs
                                    if r.run_dir not in unfinished}
    # Runs that wait for nothing first, so the local executor starts every base at once.
    for run in sorted(todo, key=lambda r: r.init_from in unfinished):
        done[run.run_dir] = _submit(run, options, submitter, jobs, waits=run.init_from
                                    in unfinished)
    submitter.wait()
    return [done[r.run_dir] for r in runs]


def _submit(run: SweepRun, options: SweepOptions, submitter: Submitter,
            jobs: dict[Path, str], *, waits: bool) -> Submission:
    name = run.run_dir.name
    current = run_state(options.out, run.arm, name)
    if current.state in ("pending", "running") and current.job_id is not None and (
            submitter.active(current.job_id)):
        jobs[run.run_dir] = current.job_id  # still queued or running: depend on that job
        return Submission(run, "queued", current.job_id)
    after = (jobs[run.init_from],) if run.init_from in jobs else ()
    if waits and not after:
        return Submission(run, "held")
    evaluate = options.evaluate and run.arm != PRETRAIN_ARM
    job = SweepJob(out=Path(options.out), arm=run.arm, run_dir=run.run_dir,
                   config_file=run.config_file, evaluate=evaluate, lcc=options.lcc)
    submitted = submitter.submit(job, run.config.slurm, after=after)
    if submitted is None:
        return Submission(run, "held", after=after)
    record_submission(options.out, run.arm, name, executor=submitter.kind,
                      job_id=submitted.job_id, log=submitted.log, evaluate=evaluate)
    jobs[run.run_dir] = submitted.job_id
    return Submission(run, "submitted", submitted.job_id, after)


__all__ = ["ACTIVE_STATES", "LocalSubmitter", "SlurmSubmitter", "Submission", "Submitted",
           "Submitter", "SweepJob", "make_submitter", "slurm_parameters", "submit_sweep"]
