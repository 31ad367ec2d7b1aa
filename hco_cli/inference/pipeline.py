"""The pipelined per-case half of ``hco predict``: the device never waits for the disk.

Cases are still predicted one after another, but only the sliding window and the labels stay
on the main thread. The next case is read ahead by a thread; the labels and their largest
components are made on the device the map was stitched on (on a GPU only the final uint8 label
map comes back, with no labelling on the host); a few writer threads resample each label map
to the original grid and compress the NIfTI (zlib releases the GIL), with at most
``writers`` cases waiting, so memory stays bounded. With ``--evaluate`` each written file is
scored as soon as it exists by worker processes that are forked before any of these threads
start, after the modules scoring needs are imported (a worker scores about one case, and would
otherwise import them for it); they read the file back as ``hco evaluate`` does, so the values
are the serial path's. Each case's scoring wall and CPU seconds are kept (stages ``score`` and
``score_cpu``).

A writer's or scorer's error is raised in the main thread at the next hand-off (or at the
end) as the exception it was, so the CLI prints its usual one line; pending work is cancelled
and running work finished before the caller removes the temporary output folder. Every file
is written under a temporary name and renamed (:func:`hco_cli.io_utils.atomic_path`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hco_cli.data.dataset import CaseGeometry
from hco_cli.data.labels import LabelMap
from hco_cli.evaluation.evaluate import (
    CaseResult,
    CaseTask,
    evaluate_case,
    usable_cores,
    worker_context,
)
from hco_cli.inference.cases import (
    CasePrediction,
    Outputs,
    Progress,
    Window,
    WindowProgress,
    case_probabilities,
    device_labels,
    write_prediction,
)
from hco_cli.inference.inputs import InputCase, LoadedCase
from hco_cli.inference.probabilities import UNCERTAINTY_DIR, write_probabilities, write_uncertainty
from hco_cli.inference.scoring import case_task, import_scoring_modules
from hco_cli.inference.sliding_window import Models
from hco_cli.inference.stitching import peak_mib, reset_peak

MAX_WRITERS = 4
Score = tuple[CaseResult, float, float]  # a case's result, wall and CPU seconds


def default_writers() -> int:
    """Writer threads: up to 4, never more than the cores this process may use."""
    return max(1, min(MAX_WRITERS, usable_cores()))


class WorkQueue:
    """A thread pool with a bounded backlog whose first failure is raised in the caller."""

    def __init__(self, workers: int, *, backlog: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hco-writer")
        self._slots = threading.Semaphore(workers + backlog)
        self._futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Queue ``fn(*args)``; blocks while the backlog is full; raises an earlier failure."""
        self.raise_failure()
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)
        return future

    def raise_failure(self) -> None:
        """Raise the exception of the first finished job that failed, if any."""
        for future in self._futures:
            if future.done() and not future.cancelled():
                error = future.exception()
                if error is not None:
                    raise error

    def results(self) -> list[Any]:
        """Every job's result in submission order (the first failure is raised)."""
        return [future.result() for future in self._futures]

    def close(self) -> None:
        """Cancel what has not started, wait for what runs."""
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def scoring_pool(jobs: int, references: dict[str, Any] | None = None) -> Iterator[Pool | None]:
    """``jobs`` forked worker processes, all started now (before any thread of ours), or None
    for scoring in the writer threads. The scoring modules are imported first (given the
    ``references``), so that no worker imports them again. Terminated on exit."""
    if jobs <= 1:
        yield None
        return
    if references is not None:
        import_scoring_modules(references)
    # hco evaluate's context; multiprocessing.Pool starts every worker up front.
    with worker_context().Pool(jobs) as pool:
        yield pool


def timed_score(task: CaseTask) -> Score:
    """:func:`evaluate_case`, its wall seconds and its CPU seconds (in a worker process: wall
    well above CPU means the worker waited for a core)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = evaluate_case(task)
    return result, time.perf_counter() - start, time.process_time() - cpu


@dataclass(frozen=True)
class _Written:
    seconds: float
    score: AsyncResult[Score] | Score | None

    def result(self) -> Score | None:
        if isinstance(self.score, AsyncResult):
            return self.score.get()
        return self.score


def predict_cases_pipelined(
    models: Models, cases: Sequence[InputCase], out_dir: Path, window: Window, *,
    labels: LabelMap, device: torch.device, outputs: Outputs | None = None,
    references: dict[str, Any] | None = None, progress: Progress | None = None,
    window_progress: WindowProgress | None = None, writers: int | None = None,
    jobs: int | None = None,
) -> tuple[list[CasePrediction], list[CaseResult] | None]:
    """:func:`~hco_cli.inference.cases.predict_cases` with writing (and, given the cases'
    ``references``, scoring) beside the device work; also the per-case metric results."""
    outputs = outputs or Outputs()
    n_jobs = min(jobs or usable_cores(), len(cases)) if references is not None else 0
    n_writers = writers or default_writers()
    queue = WorkQueue(n_writers, backlog=n_writers)
    with scoring_pool(n_jobs, references) as pool, ThreadPoolExecutor(1, "hco-reader") as reader:
        try:
            handed = _run_cases(models, cases, out_dir, window, labels=labels, device=device,
                                outputs=outputs, references=references, progress=progress,
                                window_progress=window_progress, queue=queue, pool=pool,
                                reader=reader)
            written: list[_Written] = queue.results()
            scores = [w.result() for w in written]
        finally:
            queue.close()
    done = [replace_stages(c, write=w.seconds, score=s[1] if s else None,
                           score_cpu=s[2] if s else None)
            for c, w, s in zip(handed, written, scores, strict=True)]
    results = [s[0] for s in scores if s is not None] if references is not None else None
    return done, results


def _run_cases(models: Models, cases: Sequence[InputCase], out_dir: Path, window: Window, *,
               labels: LabelMap, device: torch.device, outputs: Outputs,
               references: dict[str, Any] | None, progress: Progress | None,
               window_progress: WindowProgress | None, queue: WorkQueue, pool: Pool | None,
               reader: ThreadPoolExecutor) -> list[CasePrediction]:
    """The main thread's loop: read ahead, predict, label, hand over to the writers."""
    handed: list[CasePrediction] = []
    ahead: Future[LoadedCase] | None = reader.submit(cases[0].load) if cases else None
    for i, case in enumerate(cases):
        start = time.perf_counter()
        reset_peak(device)
        loaded = ahead.result() if ahead is not None else case.load()
        ahead = reader.submit(cases[i + 1].load) if i + 1 < len(cases) else None
        loaded_at = time.perf_counter()
        step = None if window_progress is None else functools.partial(_named, window_progress,
                                                                      case.case)
        probs, where = case_probabilities(models, loaded.image, window, device=device,
                                          progress=step)
        _sync(probs.device)
        forward_at = time.perf_counter()
        label_map = device_labels(probs, window)
        labeled_at = time.perf_counter()
        extra = probs.cpu().numpy() if outputs.probabilities or outputs.uncertainty else None
        del probs
        path = Path(out_dir) / f"{case.case}.nii.gz"
        task = (case_task(case.case, path, references[case.case], labels)
                if references is not None else None)
        queue.submit(_write_case, label_map, extra, loaded.geometry, path, labels, outputs,
                     task, pool)
        handed.append(CasePrediction(
            case=case.case, path=path, prepared_shape=loaded.geometry.prepared.shape,
            original_shape=loaded.geometry.original.shape,
            seconds=time.perf_counter() - start, note=loaded.note, stitched_on=where,
            peak_gpu_mib=peak_mib(device),
            stages={"load": loaded_at - start, "forward": forward_at - loaded_at,
                    "labels": labeled_at - forward_at}))
        if progress is not None:
            progress(i + 1, len(cases), case.case)
    return handed


def _write_case(label_map: np.ndarray, probs: np.ndarray | None, geometry: CaseGeometry,
                path: Path, labels: LabelMap, outputs: Outputs, task: CaseTask | None,
                pool: Pool | None) -> _Written:
    """Write one case's files (a writer thread), then start scoring the label map."""
    start = time.perf_counter()
    write_prediction(label_map, geometry, path, labels)
    if probs is not None and outputs.probabilities:
        write_probabilities(path.parent / f"{path.name[:-7]}.npz", probs, geometry, labels)
    if probs is not None and outputs.uncertainty:
        write_uncertainty(path.parent / UNCERTAINTY_DIR / path.name, probs, geometry)
    seconds = time.perf_counter() - start
    if task is None:
        return _Written(seconds, None)
    if pool is None:
        return _Written(seconds, timed_score(task))
    return _Written(seconds, pool.apply_async(timed_score, (task,)))


def replace_stages(case: CasePrediction, **stages: float | None) -> CasePrediction:
    """``case`` with the given stage seconds added (None: not measured)."""
    added = {k: v for k, v in stages.items() if v is not None}
    return dataclasses.replace(case, stages={**case.stages, **added})


def _named(progress: WindowProgress, case: str, done: int, total: int) -> None:
    progress(done, total, case)


def _sync(device: torch.device) -> None:
    """Wait for the device: the forward's seconds are its own, not the labels' (one wait per
    case, where the labels' transfer would wait anyway)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
