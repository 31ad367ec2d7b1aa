"""A sweep's folder layout and the state of each run, read from files alone (no torch).

    OUT/_configs/<arm>/<run>.yaml           the plan: one resolved config per run
    OUT/<arm>/<run>/                        the run folder (run.json, checkpoints/last.pt, ...)
    OUT/_logs/<arm>/<run>.log               what the run printed (subprocesses, jobs)
    OUT/_jobs/<arm>/<run>.submitted.json    the executor's latest submission: job id, log
    OUT/_jobs/<arm>/<run>.state.json        the job's own account: running, done, interrupted
                                            or failed

A job's account counts only if it names the submitted job id, so a resubmitted run reads
``pending`` until its new job starts. A running run's progress (iteration of the planned
total, the rate over the last minutes of its log, minutes left at that rate) comes from the
tail of its ``metrics.jsonl`` and its planned config. ``hco sweep --status OUT`` renders
:func:`sweep_status`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hco_cli.errors import CheckpointError
from hco_cli.io_utils import write_json
from hco_cli.locks import abandoned
from hco_cli.runs.layout import RunFolder

LOG_DIR = "_logs"
CONFIG_DIR = "_configs"
JOBS_DIR = "_jobs"
PRETRAIN_ARM = "_pretrain"

RunState = Literal["pending", "running", "done", "interrupted", "failed"]
JobState = Literal["running", "done", "interrupted", "failed"]
# How Slurm ends a job in its log (time limit, scancel, memory, node failure).
_SCHEDULER_END = re.compile(r"CANCELLED|DUE TO TIME LIMIT|oom[-_ ]kill|OUT_OF_MEMORY|"
                            r"NODE_FAIL|PREEMPTED", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Progress:
    """How far a running run is: its last logged training iteration of the planned total, and
    the iterations per second over the last ``window`` seconds of its log (validation pauses
    inside the window count, as they will in the rest of the run)."""

    iteration: int
    total: int | None = None
    rate: float | None = None

    @property
    def minutes_left(self) -> float | None:
        if self.total is None or not self.rate:
            return None
        return max(self.total - self.iteration, 0) / self.rate / 60


@dataclass(frozen=True)
class RunStatus:
    """One run of a sweep as its files describe it."""

    arm: str
    name: str
    run_dir: Path
    state: RunState
    job_id: str | None = None
    detail: str = ""  # a failure's message, or the log's last line
    progress: Progress | None = None  # running runs with a log


# --------------------------------------------------------------------------- job records
def _record(out: Path, arm: str, name: str, kind: str) -> Path:
    return Path(out) / JOBS_DIR / arm / f"{name}.{kind}.json"


def record_submission(out: Path, arm: str, name: str, *, executor: str, job_id: str,
                      log: Path | None = None, evaluate: bool = False) -> None:
    """The executor's note that ``job_id`` now brings the run to finished."""
    write_json(_record(out, arm, name, "submitted"), {
        "executor": executor, "job_id": job_id, "log": str(log) if log else None,
        "evaluate": evaluate, "time": time.time()})


def record_state(out: Path, arm: str, name: str, *, job_id: str,
                 state: JobState, message: str = "") -> None:
    """The job's own account of itself (or its executor's, for one that died unannounced)."""
    write_json(_record(out, arm, name, "state"), {
        "job_id": job_id, "state": state, "message": message, "time": time.time()})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} if the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tail(path: Path | str, max_bytes: int) -> tuple[str, bool] | None:
    """The last ``max_bytes`` of a file as text, and whether they start inside it (so that
    their first line may be cut); None where it cannot be read."""
    try:
        with Path(path).open("rb") as f:
            f.seek(0, 2)
            start = max(0, f.tell() - max_bytes)
            f.seek(start)
            return f.read().decode("utf-8", errors="replace"), start > 0
    except OSError:
        return None


def last_line(path: Path | str | None) -> str:
    """The last non-empty line of a log (progress bars' carriage returns split lines too)."""
    tail = _tail(path, 8192) if path else None
    if tail is None:
        return ""
    lines = [_ANSI.sub("", line).strip() for line in re.split(r"[\r\n]", tail[0])]
    return next((line for line in reversed(lines) if line), "")


def log_path(out: Path, arm: str, name: str) -> Path:
    return Path(out) / LOG_DIR / arm / f"{name}.log"


def summary_path(run_dir: Path) -> Path:
    return RunFolder(run_dir).summary("best")


# ---------------------------------------------------------------------------- progress
def planned_iterations(framework: dict[str, Any]) -> int | None:
    """The training iterations of a dumped framework config, all phases: BCP's pre-training +
    self-training, CMT's epochs x iterations per epoch, the others' ``iterations``."""
    def count(key: str) -> int | None:
        value = framework.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    pre, self_ = count("pretrain_iterations"), count("selftrain_iterations")
    if self_ is not None:
        return self_ + (pre or 0)
    epochs, per_epoch = count("epochs"), count("iterations_per_epoch")
    if epochs is not None and per_epoch is not None:
        return epochs * per_epoch
    return count("iterations")


def _planned_total(config: Path) -> int | None:
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    framework = data.get("framework") if isinstance(data, dict) else None
    return planned_iterations(framework) if isinstance(framework, dict) else None


def _tail_records(path: Path, max_bytes: int) -> list[dict[str, Any]]:
    """The JSON records in the last ``max_bytes`` of a log that is being written: a line cut
    by the start of the tail or by the writer is skipped."""
    tail = _tail(path, max_bytes)
    if tail is None:
        return []
    text, cut = tail
    lines = text.split("\n")[1 if cut else 0:]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def run_progress(metrics: Path, total: int | None, *, window: float = 300.0,
                 max_bytes: int = 4 << 20) -> Progress | None:
    """A run's :class:`Progress` from the training records at the end of its metrics log (at
    most ``max_bytes`` read), or None before its first record."""
    train = [r for r in _tail_records(metrics, max_bytes)
             if r.get("phase") != "val" and "split" not in r and isinstance(r.get("iter"), int)
             and isinstance(r.get("time"), (int, float))]
    if not train:
        return None
    last = train[-1]
    first = next(r for r in train if r["time"] >= last["time"] - window)
    span = last["time"] - first["time"]
    rate = (last["iter"] - first["iter"]) / span if span > 0 else None
    return Progress(last["iter"], total, rate)


# ------------------------------------------------------------------------------ states
def run_state(out: Path, arm: str, name: str) -> RunStatus:
    """The state of one planned run: done, interrupted, failed, running or pending (see the
    module doc)."""
    out = Path(out)
    run_dir = out / arm / name
    submitted = read_json(_record(out, arm, name, "submitted"))
    account = read_json(_record(out, arm, name, "state"))
    job_id = submitted.get("job_id") or account.get("job_id")
    if submitted and account.get("job_id") != submitted.get("job_id"):
        account = {}  # an earlier job's account; the latest submission has not started
    info = read_json(RunFolder(run_dir).run_json)
    evaluated = not submitted.get("evaluate") or summary_path(run_dir).is_file()
    log = last_line(log_path(out, arm, name))

    def status(state: RunState, detail: str = "") -> RunStatus:
        return RunStatus(arm, name, run_dir, state, str(job_id) if job_id else None, detail)

    if info.get("finished") is True and evaluated:
        best = (info.get("best") or {}).get("score")
        return status("done", "" if best is None else f"best dice {best:.4f}")
    state = account.get("state")
    if state == "interrupted":  # Ctrl-C (or the sweep's SIGTERM): nothing failed
        return status("interrupted", _interrupted_detail(run_dir))
    if state in ("failed", "done"):  # done here: the job ended, the run is not finished
        return status("failed", account.get("message") or log or "ended before finishing")
    if state == "running":
        ended = last_line(submitted.get("log"))
        if _SCHEDULER_END.search(ended):
            return status("failed", ended)
        if submitted.get("executor") == "local" and abandoned(run_dir):
            return status("failed", "stopped: no process holds the run any more (killed?); "
                          "hco sweep again resumes it")
        # the run's own config where it has written one (a resumed run may have been given a
        # longer schedule), else the plan's
        folder = RunFolder(run_dir)
        total = _planned_total(folder.config)
        if total is None:
            total = _planned_total(Path(out) / CONFIG_DIR / arm / f"{name}.yaml")
        progress = run_progress(folder.metrics, total)
        return RunStatus(arm, name, run_dir, "running", str(job_id) if job_id else None, log,
                         progress)
    if submitted:
        return status("pending", f"submitted to {submitted.get('executor')}")
    return status("pending", "not submitted")


def _interrupted_detail(run_dir: Path) -> str:
    if RunFolder(run_dir).checkpoint("last").is_file():
        return "stopped by Ctrl-C; hco sweep again resumes it from its last checkpoint"
    return "stopped by Ctrl-C before its first checkpoint; hco sweep again starts it"


def planned_runs(out: Path) -> list[tuple[str, str]]:
    """(arm, run name) of every run the plan wrote, cell by cell, shared pre-training first."""
    configs = sorted(Path(out).glob(f"{CONFIG_DIR}/*/*.yaml"))
    if not configs:
        raise CheckpointError(f"{out} holds no sweep plan ({CONFIG_DIR}/<arm>/<run>.yaml); "
                              "start the sweep with hco sweep --config ... --out OUT")
    runs = [(p.parent.name, p.stem) for p in configs]
    arms = list(dict.fromkeys(a for a, _ in runs))
    return sorted(runs, key=lambda r: (r[1], r[0] != PRETRAIN_ARM, arms.index(r[0])))


def sweep_status(out: Path) -> list[RunStatus]:
    """Every planned run's state, from the sweep folder's files alone."""
    return [run_state(out, arm, name) for arm, name in planned_runs(out)]


__all__ = ["CONFIG_DIR", "JOBS_DIR", "LOG_DIR", "PRETRAIN_ARM", "JobState", "Progress",
           "RunState", "RunStatus", "last_line", "log_path", "planned_iterations",
           "planned_runs", "read_json", "record_state", "record_submission", "run_progress",
           "run_state", "summary_path", "sweep_status"]
