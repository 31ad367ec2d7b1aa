"""``hco train --gpus N``: spawn N training processes and watch them from this one.

Each worker sets the variables torchrun would set (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
LOCAL_RANK) and calls :func:`~hco_cli.training.loop.run_local` or ``resume_local``, which
join the process group (:mod:`hco_cli.training.distributed`). Rank 0's progress events and
result come back through a queue; the first worker that fails ends the others, and its
one-line error is raised here.

SIGINT and SIGTERM belong to this process: the workers ignore both, the first here asks them
through a shared event to stop with a checkpoint where they next agree
(:mod:`~hco_cli.training.interrupt`) and is raised here as KeyboardInterrupt once they have;
a second one ends them at once (SIGKILL, which they cannot ignore). On Linux a worker is also
killed when this process dies without ending it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hco_cli import errors
from hco_cli.config import TrainConfig, validate_config
from hco_cli.errors import HcoError
from hco_cli.processes import libc_prctl, stop_with_parent
from hco_cli.training.distributed import SAME_STREAMS_ENV
from hco_cli.training.events import ProgressCallback, ProgressEvent, RunResult
from hco_cli.training.interrupt import SharedFlag, StopRequest, agreement_notice
from hco_cli.training.loop import resume_local, run_local
from hco_cli.training.tracking import Sink

INTERRUPTED = 130  # a worker's exit code once it has stopped on the launcher's signal

WorkerHook = Callable[[int, ProgressEvent], None]
"""Called in every worker process with its rank and each of its progress events."""


@dataclass(frozen=True)
class _Job:
    config: dict[str, Any] | None
    resume_dir: Path | None
    hook: WorkerHook | None
    same_streams: bool
    accept_config_changes: bool = False
    sinks: tuple[Sink, ...] = ()  # rank 0's extra tracking sinks
    parent: int | None = None  # the launching process's pid (None: no death signal)


def launch(config: TrainConfig | None = None, *, resume_dir: Path | None = None,
           processes: int, progress: ProgressCallback | None = None,
           worker_hook: WorkerHook | None = None, same_streams: bool = False,
           accept_config_changes: bool = False, sinks: Sequence[Sink] = ()) -> RunResult:
    """Train ``config`` (or resume ``resume_dir``) in ``processes`` spawned worker processes.

    Rank 0's progress events reach ``progress`` here; the first worker that fails ends the
    others and its HcoError is raised here with its own class and message. ``worker_hook``
    (picklable) runs in every worker on each of its events; ``same_streams`` gives every rank
    rank 0's random streams (a check: the run then equals a one-process run). ``sinks``
    (picklable) are handed to rank 0's loop.
    """
    if (config is None) == (resume_dir is None):
        raise ValueError("give exactly one of config or resume_dir")
    context = mp.get_context("spawn")
    channel = context.Queue()
    stop = StopRequest(shared=context.Event())
    port = _free_port()
    job = _Job(config=config.model_dump(mode="json") if config is not None else None,
               resume_dir=resume_dir, hook=worker_hook, same_streams=same_streams,
               accept_config_changes=accept_config_changes, sinks=tuple(sinks),
               parent=os.getpid())
    workers = [context.Process(target=_worker,
                               args=(rank, processes, port, job, channel, stop.shared),
                               name=f"hco-rank{rank}") for rank in range(processes)]
    for worker in workers:
        worker.start()
    notice = agreement_notice(config.log_every if config is not None else None)
    try:
        with stop.installed(notice=notice):
            return _supervise(workers, channel, progress or (lambda event: None), stop)
    finally:
        for worker in workers:  # they ignore SIGTERM (the interrupt module's docstring)
            if worker.is_alive():
                worker.kill()
        for worker in workers:
            worker.join()


def _supervise(workers: list[Any], channel: Any, progress: ProgressCallback,
               stop: StopRequest) -> RunResult:
    """Forward rank 0's events until every worker has exited; raise the first failure, or
    KeyboardInterrupt where Ctrl-C here stopped them all (each with its checkpoint saved)."""
    result: list[RunResult] = []
    while True:
        message = _get(channel, timeout=0.2)
        if message is not None:
            _handle(message, progress, result)
            continue
        codes = [w.exitcode for w in workers]
        failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        # Stopping on Ctrl-C, the first to save and exit waits for the others to do the same.
        stopping = stop.requested and all(c == INTERRUPTED for _, c in failed)
        if any(c is None for c in codes) and (not failed or stopping):
            continue
        # Everyone exited, or one failed: what they put before exiting is still queued.
        while (message := _get(channel, timeout=1.0)) is not None:
            _handle(message, progress, result)
        if stop.requested and all(c == INTERRUPTED for c in codes):
            raise stop.stopped()
        if failed:
            rank, code = failed[0]
            raise HcoError(f"training process {rank} ended with exit code {code}")
        if not result:
            raise HcoError("the training processes ended without a result")
        return result[0]


def _get(channel: Any, *, timeout: float) -> tuple[str, Any] | None:
    try:
        message: tuple[str, Any] = channel.get(timeout=timeout)
    except queue_module.Empty:
        return None
    return message


def _handle(message: tuple[str, Any], progress: ProgressCallback,
            result: list[RunResult]) -> None:
    kind, payload = message
    if kind == "event":
        progress(payload)
    elif kind == "result":
        result.append(payload)
    else:
        raise _rebuild(payload)


def _rebuild(payload: tuple[int, str, str]) -> HcoError:
    """The worker's error as an HcoError of the same class where it is one of ours."""
    _, name, message = payload
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, HcoError):
        return cls(message)
    return HcoError(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, job: _Job, channel: Any,
            stop: SharedFlag | None = None) -> None:
    """One training process: rank ``rank`` of ``world``, reporting through ``channel``; it
    stops with a checkpoint once ``stop`` is set (the launcher's SIGINT or SIGTERM)."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # the launcher's to handle
        signal.signal(signum, signal.SIG_IGN)
    if job.parent is not None:
        stop_with_parent(signal.SIGKILL, parent=job.parent, prctl=libc_prctl())
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    if job.same_streams:
        os.environ[SAME_STREAMS_ENV] = "1"

    def progress(event: ProgressEvent) -> None:
        if job.hook is not None:
            job.hook(rank, event)
        if rank == 0:
            channel.put(("event", event))

    sinks = job.sinks if rank == 0 else ()
    try:
        if job.resume_dir is not None:
            result = resume_local(job.resume_dir, progress=progress,
                                  accept_config_changes=job.accept_config_changes, sinks=sinks,
                                  stop=StopRequest(shared=stop))
        else:
            assert job.config is not None  # launch() passes exactly one of the two
            result = run_local(validate_config(job.config), progress=progress, sinks=sinks,
                               stop=StopRequest(shared=stop))
        if rank == 0:
            channel.put(("result", result))
    except HcoError as exc:
        _report(channel, (rank, type(exc).__name__, str(exc)))
    except KeyboardInterrupt:  # stopped by the launcher's Ctrl-C, checkpoint saved
        sys.exit(INTERRUPTED)
    except BaseException as exc:  # a bug: its traceback goes to stderr, one line to the parent
        traceback.print_exc()
        _report(channel, (rank, "", f"training process {rank} failed: "
                                    f"{type(exc).__name__}: {exc}".splitlines()[0]))
    channel.close()
    channel.join_thread()


def _report(channel: Any, payload: tuple[int, str, str]) -> None:
    channel.put(("error", payload))
    channel.close()
    channel.join_thread()
    sys.exit(1)


__all__ = ["WorkerHook", "launch"]
