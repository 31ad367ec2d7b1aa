"""``train`` and ``resume``: the one place that decides between launching workers and
training in this process.

With ``distributed.processes`` > 1 outside torchrun, the run folder is checked and prepared
here, then :func:`~hco_cli.training.launch.launch` spawns the workers, each of which calls
:func:`~hco_cli.training.loop.run_local` (or ``resume_local``) itself, never ``train`` again.
Otherwise this process trains: the only process, or one of torchrun's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hco_cli.config import TrainConfig
from hco_cli.runs.folder import prepare_run_dir
from hco_cli.training import distributed
from hco_cli.training.events import ProgressCallback, ProgressEvent, RunResult
from hco_cli.training.launch import launch
from hco_cli.training.loop import checked_config, continue_local, read_resume_point, run_local
from hco_cli.training.run_guard import run_session
from hco_cli.training.setup import check_config
from hco_cli.training.tracking import Sink


def train(config: TrainConfig, *, progress: ProgressCallback | None = None,
          force: bool = False, sinks: Sequence[Sink] = ()) -> RunResult:
    """Train from scratch into ``config.run_dir`` (refused if non-empty unless ``force``).

    With ``distributed.processes`` > 1 the run is data-parallel: it spawns that many worker
    processes (:mod:`hco_cli.training.launch`), or, under torchrun, is one of them. ``sinks``
    receive rank 0's records besides those ``config.tracking`` names (picklable with
    processes > 1).
    """
    processes = config.distributed.processes
    if not distributed.needs_launch(processes):
        return run_local(config, progress=progress, force=force, sinks=sinks)
    config = checked_config(config)
    assert config.run_dir is not None  # checked_config fills it in
    with run_session(config.run_dir, main=distributed.environment_rank() == 0):
        check_config(config)
        note = prepare_run_dir(config.run_dir, force=force)  # before spawning: errors at once
        if note and progress is not None:
            progress(ProgressEvent("warning", message=note))
        return launch(config, processes=processes, progress=progress, sinks=sinks)


def resume(run_dir: Path, *, progress: ProgressCallback | None = None,
           processes: int | None = None, accept_config_changes: bool = False,
           sinks: Sequence[Sink] = ()) -> RunResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` exactly where it stopped.

    It resumes with as many processes as it was saved with (``processes``, if given, must
    match); a data-parallel run spawns its workers again. An edited ``config.yaml`` is refused
    unless ``accept_config_changes`` (:func:`~hco_cli.training.run_guard.resume_config`).
    """
    run_dir = Path(run_dir)
    with run_session(run_dir, main=distributed.environment_rank() == 0):
        point = read_resume_point(run_dir, processes=processes,
                                  accept_config_changes=accept_config_changes)
        if distributed.needs_launch(point.processes):
            return launch(resume_dir=run_dir, processes=point.processes, progress=progress,
                          accept_config_changes=accept_config_changes, sinks=sinks)
        return continue_local(run_dir, point, progress=progress, sinks=sinks)


__all__ = ["RunResult", "resume", "train"]
