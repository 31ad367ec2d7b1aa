"""A sweep's folder layout and the state of each run, read from files alone (no torch).

    OUT/_configs/<arm>/<run>.yaml           the plan: one resolved config per run
    OUT/<arm>/<run>/                        the run folder (run.json, checkpoints/last.pt, ...)
    OUT/_logs/<arm>/<run>.log               what the run printed (subprocesses, jobs)
    OUT/_jobs/<arm>/<run>.submitted.json    the executor's latest submission: job id, log
    OUT/_jobs/<arm>/<run>.state.json        the job's own account: running, done or failed

A job's account counts only if it names the submitted job id, so a resubmitted run reads
``pending`` until its new job starts. ``hco sweep --status OUT`` renders :func:`sweep_status`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hco_cli.errors import CheckpointError
from hco_cli.io_utils import write_json
from hco_cli.runs.layout import RunFolder

LOG_DIR = "_logs"
CONFIG_DIR = "_configs"
JOBS_DIR = "_jobs"
PRETRAIN_ARM = "_pretrain"

RunState = Literal["pending", "running", "done", "failed"]
# How Slurm ends a job in its log (time limit, scancel, memory, node failure).
_SCHEDULER_END = re.compile(r"CANCELLED|DUE TO TIME LIMIT|oom[-_ ]kill|OUT_OF_MEMORY|"
                            r"NODE_FAIL|PREEMPTED", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class RunStatus:
    """One run of a sweep as its files describe it."""

    arm: str
    name: str
    run_dir: Path
    state: RunState
    job_id: str | None = None
    detail: str = ""  # a failure's message, or the log's last line


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
                 state: Literal["running", "done", "failed"], message: str = "") -> None:
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


def last_line(path: Path | str | None) -> str:
    """The last non-empty line of a log (progress bars' carriage returns split lines too)."""
    if not path:
        return ""
    try:
        with Path(path).open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [_ANSI.sub("", line).strip() for line in re.split(r"[\r\n]", tail)]
    return next((line for line in reversed(lines) if line), "")


def log_path(out: Path, arm: str, name: str) -> Path:
    return Path(out) / LOG_DIR / arm / f"{name}.log"


def summary_path(run_dir: Path) -> Path:
    return RunFolder(run_dir).summary("best")


# ------------------------------------------------------------------------------ states
def run_state(out: Path, arm: str, name: str) -> RunStatus:
    """The state of one planned run: done, failed, running or pending (see the module doc)."""
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
    if state in ("failed", "done"):  # done here: the job ended, the run is not finished
        return status("failed", account.get("message") or log or "ended before finishing")
    if state == "running":
        ended = last_line(submitted.get("log"))
        if _SCHEDULER_END.search(ended):
            return status("failed", ended)
        return status("running", log)
    if submitted:
        return status("pending", f"submitted to {submitted.get('executor')}")
    return status("pending", "not submitted")


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


__all__ = ["CONFIG_DIR", "JOBS_DIR", "LOG_DIR", "PRETRAIN_ARM", "RunStatus", "last_line",
           "log_path", "planned_runs", "read_json", "record_state", "record_submission",
           "run_state", "summary_path", "sweep_status"]
