"""Writing a prepared dataset folder (format: :mod:`hco_cli.data.dataset`), all or nothing.

Cases are loaded, checked, preprocessed and written one by one, optionally in a pool of
worker processes; everything goes into a temporary folder beside the target that is renamed
onto it only when every case and both JSON files are written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hco_cli.data.dataset import DatasetInfo, Splits
from hco_cli.data.labels import LabelMap
from hco_cli.data.plan import DataPlan, PreprocessPlan, write_plan
from hco_cli.data.preprocess import PreparedCase, preprocess_case
from hco_cli.data.sources import SourceCase
from hco_cli.data.sources.load import load_case
from hco_cli.errors import DatasetExistsError
from hco_cli.io_utils import atomic_dir
from hco_cli.locks import hold
from hco_cli.outputs import check_output_folder, check_replaceable

Progress = Callable[[int, int, str], None]
"""Called after each case as ``progress(done, total, case_id)``."""


@dataclass(frozen=True)
class CaseJob:
    """One case to prepare: whether an empty label may be dropped (unlabeled split) and
    whether it is cropped around its label (labeled training cases, when asked)."""

    source: SourceCase
    allow_empty_label: bool = False
    crop_by_label: bool = False


@dataclass
class CaseStats:
    """What the summary needs to know about one written case."""

    case: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    has_label: bool
    # Voxel count per stored label value (index = value); empty without label.
    label_counts: list[int] = field(default_factory=list)
    dropped_empty_label: bool = False
    # Values of the label as read, before resampling, where the label map is discovered.
    label_values: list[int] = field(default_factory=list)


@contextlib.contextmanager
def dataset_output(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary dataset folder (with ``cases/``) that becomes ``out`` on success.

    Holds ``out``'s lock throughout. Refuses an existing ``out`` up front unless ``force``, and
    with ``force`` anything but a dataset that hco wrote; the old dataset is replaced only once
    the new one is complete.
    """
    out = Path(out)
    check_output_folder(out, option="--out")
    with hold(out):
        if out.exists() and not force:
            raise DatasetExistsError(f"{out} already exists; use --force to replace it")
        if force:
            check_replaceable(out, "dataset", option="--out")
        try:
            with atomic_dir(out, kind="dataset", force=force) as tmp:
                (tmp / "cases").mkdir()
                yield tmp
        except FileExistsError as exc:
            raise DatasetExistsError(f"{out} already exists; use --force to replace it") from exc


def write_case(cases_dir: Path, prepared: PreparedCase) -> CaseStats:
    """Write the arrays and geometry of one case; return its statistics."""
    case = prepared.geometry.case
    np.save(cases_dir / f"{case}_image.npy", prepared.image, allow_pickle=False)
    counts: list[int] = []
    if prepared.label is not None:
        np.save(cases_dir / f"{case}_label.npy", np.ascontiguousarray(prepared.label),
                allow_pickle=False)
        counts = np.bincount(prepared.label.ravel()).tolist()
    geometry_json = prepared.geometry.model_dump_json(indent=2) + "\n"
    (cases_dir / f"{case}.json").write_text(geometry_json, encoding="utf-8")
    grid = prepared.geometry.prepared
    return CaseStats(case=case, shape=grid.shape, spacing=grid.spacing,
                     has_label=prepared.label is not None, label_counts=counts,
                     dropped_empty_label=prepared.dropped_empty_label,
                     label_values=list(prepared.label_values))


def process_case(job: CaseJob, plan: PreprocessPlan, cases_dir: Path) -> CaseStats:
    """Load, check, preprocess and write one case (runs in a worker process too)."""
    raw = load_case(job.source)
    prepared = preprocess_case(job.source, raw, plan, allow_empty_label=job.allow_empty_label,
                               crop_by_label=job.crop_by_label)
    return write_case(cases_dir, prepared)


def run_cases(
    jobs: Sequence[CaseJob],
    plan: PreprocessPlan,
    cases_dir: Path,
    *,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[CaseStats]:
    """Prepare every job, in ``workers`` processes when above 1; stop at the first error."""
    total = len(jobs)
    if workers <= 1 or total <= 1:
        stats = []
        for done, job in enumerate(jobs, start=1):
            stats.append(process_case(job, plan, cases_dir))
            if progress is not None:
                progress(done, total, job.source.case)
        return stats
    with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
        futures: dict[Future[CaseStats], int] = {
            pool.submit(process_case, job, plan, cases_dir): i for i, job in enumerate(jobs)
        }
        results: dict[int, CaseStats] = {}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(len(results), total, jobs[futures[future]].source.case)
    return [results[i] for i in range(total)]


def remap_labels(cases_dir: Path, stats: list[CaseStats], labels: LabelMap) -> None:
    """Rewrite stored label values as training indices (labels discovered after the cases)."""
    for case in stats:
        if not case.has_label:
            continue
        path = cases_dir / f"{case.case}_label.npy"
        indices = np.ascontiguousarray(labels.to_indices(np.load(path)))
        np.save(path, indices, allow_pickle=False)
        case.label_counts = np.bincount(indices.ravel()).tolist()


def write_metadata(root: Path, info: DatasetInfo, splits: Splits, plan: DataPlan) -> None:
    """Write ``dataset.json``, ``splits.json`` and ``plans.json`` into the (temporary) folder."""
    (root / "dataset.json").write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (root / "splits.json").write_text(splits.model_dump_json(indent=2) + "\n", encoding="utf-8")
    write_plan(root, plan)
