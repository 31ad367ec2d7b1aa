"""The runs ``hco predict`` and ``hco export`` read: run folders or checkpoint files, their
networks, and the plan each was trained with.

Several runs (folds, seeds) form an ensemble only where they agree on what a prediction
depends on: the preprocessing plan (``plans.json``: spacing, crop rule, normalisation, label
map), the number of input channels and classes, and the patch. The first difference is
named in one line.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.identity import DatasetIdentity, dataset_identity
from hco_cli.data.plan import PLAN_FILE, DataPlan, read_plan
from hco_cli.errors import CheckpointError, ConfigError, DataError
from hco_cli.io_utils import is_glob
from hco_cli.runs.checkpoint import load_model_for_inference
from hco_cli.runs.folder import read_run_info
from hco_cli.runs.layout import EvalCheckpoint, RunFolder

Which = EvalCheckpoint


@dataclass(frozen=True)
class LoadedRun:
    """One run's evaluation network with its configuration and plan."""

    path: Path
    run_dir: Path | None
    checkpoint: str
    model: nn.Module
    config: Any
    plan: DataPlan | None
    # The four digests of the dataset it trained on (run.json; None for a loose .pt file and
    # for runs from before dataset identities).
    dataset_identity: DatasetIdentity | None = None

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.config.data.patch_size)


def expand_runs(paths: Sequence[Path]) -> list[Path]:
    """Run paths as given; a quoted glob (``'runs/sgd-hco/*'``) becomes the run folders and
    ``.pt`` files it matches, in sorted order. The same run twice is refused."""
    out: list[Path] = []
    for path in map(Path, paths):
        text = str(path)
        if path.exists() or not is_glob(text):
            out.append(path)
            continue
        matches = [Path(p) for p in sorted(glob.glob(text))]
        runs = [p for p in matches if RunFolder(p).config.is_file() or p.suffix == ".pt"]
        if not runs:
            raise CheckpointError(f"{text} matches no run folder (with config.yaml) and no "
                                  ".pt checkpoint")
        out.extend(runs)
    if not out:
        raise ConfigError("no run given: name a run folder or a .pt checkpoint")
    seen: set[Path] = set()
    for path in out:
        key = path.resolve()
        if key in seen:
            raise ConfigError(f"run {path} is given twice; an ensemble takes each run once")
        seen.add(key)
    return out


def locate_run(path: Path, which: Which | None) -> tuple[Path | None, str]:
    """The run folder (None for a loose .pt) and the checkpoint name used in output paths."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (expected a run folder or a .pt checkpoint)")
    if path.is_dir():
        if not RunFolder(path).config.is_file():
            raise CheckpointError(f"{path} is not a run folder (no config.yaml)")
        return path, which or "best"
    if which is not None:
        raise ConfigError(f"--checkpoint {which} applies to run folders; {path} is a checkpoint "
                          "file already")
    run = RunFolder(path.parent.parent)
    in_run = run.checkpoints == path.parent and run.config.is_file()
    return (run.path if in_run else None), path.name.removesuffix(".pt")


def load_run(path: Path, which: Which | None, device: torch.device) -> LoadedRun:
    """A run folder's (or a .pt file's) network in eval mode on ``device``, with its plan."""
    path = Path(path)
    run_dir, name = locate_run(path, which)
    model, config = load_model_for_inference(path, which=which or "best", device=device)
    plan = read_plan(run_dir / PLAN_FILE) if run_dir and (run_dir / PLAN_FILE).is_file() else None
    return LoadedRun(path, run_dir, name, model, config, plan,
                     _recorded_identity(run_dir) if run_dir else None)


def _recorded_identity(run_dir: Path) -> DatasetIdentity | None:
    try:
        return read_run_info(run_dir).dataset_identity
    except CheckpointError:  # an unreadable run.json: predicting needs only the weights
        return None


def load_runs(paths: Sequence[Path], which: Which | None, device: torch.device) -> list[LoadedRun]:
    """Every run of ``paths`` (globs expanded), checked to agree (:func:`check_agreement`)."""
    runs = [load_run(path, which, device) for path in expand_runs(paths)]
    check_agreement(runs)
    return runs


def model_channels(model: nn.Module) -> tuple[int, int] | None:
    """(input channels, classes) of a convolutional network: its first and last Conv3d."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    return (convs[0].in_channels, convs[-1].out_channels) if convs else None


def check_agreement(runs: Sequence[LoadedRun]) -> None:
    """Refuse runs that differ in channels and classes, patch, or plan (the first difference)."""
    first = runs[0]
    for other in runs[1:]:
        pair = f"{first.path} and {other.path}"
        a, b = model_channels(first.model), model_channels(other.model)
        if a != b:
            raise DataError(f"runs disagree on channels and classes: {pair} have "
                            f"{_io(a)} and {_io(b)}")
        if first.patch_size != other.patch_size:
            raise DataError(f"runs disagree on the patch: {pair} have {_xyz(first.patch_size)} "
                            f"and {_xyz(other.patch_size)}")
        where = plan_difference(first.plan, other.plan)
        if where is not None:
            raise DataError(f"runs disagree on the plan ({PLAN_FILE}): {pair} differ in {where}")


def check_plans(plans: Sequence[DataPlan], paths: Sequence[Path]) -> None:
    """Refuse resolved plans (a run's own or its dataset's) that differ."""
    for plan, path in zip(plans[1:], paths[1:], strict=True):
        where = plan_difference(plans[0], plan)
        if where is not None:
            raise DataError(f"runs disagree on the plan ({PLAN_FILE}): {paths[0]} and {path} "
                            f"differ in {where}")


def plan_difference(a: DataPlan | None, b: DataPlan | None) -> str | None:
    """The first field in which two plans differ (the data source and patch aside), or None."""
    if a is None or b is None:
        return None if a is b else f"whether there is one (one run has no {PLAN_FILE})"
    skip = {"source", "patch_size"}
    return _first_difference(a.model_dump(mode="json", exclude=skip),
                             b.model_dump(mode="json", exclude=skip), "")


def run_plan(run: LoadedRun, dataset: Path | None = None) -> DataPlan:
    """The plan a run was trained with: ``RUN/plans.json``, else its dataset's."""
    if run.plan is not None:
        return run.plan
    folder = Path(dataset) if dataset is not None else Path(run.config.data.path)
    if (folder / PLAN_FILE).is_file():
        return read_plan(folder / PLAN_FILE)
    where = f"{run.run_dir} nor in " if run.run_dir is not None else ""
    raise DataError(f"no {PLAN_FILE} in {where}{folder}: --images needs the preprocessing "
                    "plan, which hco prepare records since label maps; prepare the dataset "
                    "again and retrain, or predict its prepared split")


def check_labels(run: LoadedRun, dataset: PreparedDataset) -> None:
    """Refuse a dataset whose label map differs from the one the run trained with, or that
    was prepared with another plan (spacing, crop, normalization: the network would see
    voxels unlike those it learnt on)."""
    if run.plan is None:
        return
    trained = run.plan.labels
    if trained.values != dataset.labels.values or (
            trained.ignore_value != dataset.labels.ignore_value):
        raise DataError(f"dataset {dataset.root} has label values {list(dataset.labels.values)} "
                        f"but run {run.run_dir} trained on {list(trained.values)}")
    plan_file = Path(dataset.root) / PLAN_FILE
    if not plan_file.is_file():
        return
    # What was done to the voxels; not the statistics of the cases (another dataset prepared
    # the same way has other spacings and shapes) nor the network plan.
    theirs = read_plan(plan_file)
    where = _first_difference(
        {"channels": run.plan.channels, **run.plan.preprocess.model_dump(mode="json")},
        {"channels": theirs.channels, **theirs.preprocess.model_dump(mode="json")}, "")
    if where is not None:
        raise DataError(f"dataset {dataset.root} was prepared with another plan than run "
                        f"{run.run_dir} trained on ({PLAN_FILE} differ in {where}); predict its "
                        "scans with --images, which applies the run's plan")


def split_warnings(runs: Sequence[LoadedRun], dataset: PreparedDataset,
                   split: str) -> list[str]:
    """Warnings for runs whose dataset was split again since they trained: ``dataset`` is the
    folder a run trained on, or holds the same cases, and its ``splits.json`` differs from the
    run's, so the predicted ``split`` may now hold cases the run trained on (its scores would
    be inflated). A warning, not a refusal: a fold grid added to the same splits changes the
    digest too, and the run's training cases themselves are not recorded to compare."""
    recorded = [r for r in runs if r.dataset_identity]
    if not recorded:
        return []
    current = dataset_identity(dataset)
    root = Path(dataset.root).resolve()
    out = []
    for run in recorded:
        theirs = run.dataset_identity or {}
        same_data = (Path(run.config.data.path).resolve() == root
                     or theirs.get("cases") == current["cases"])
        if same_data and theirs.get("splits") != current["splits"]:
            out.append(f"{dataset.root} was split again since run {run.run_dir} trained on it "
                       f"(splits.json differs): its {split} split may hold cases the run "
                       "trained on, which would inflate its scores")
    return out


def open_dataset(given: Path | None, runs: Sequence[LoadedRun]) -> PreparedDataset:
    """``--data``, else the runs' shared training dataset."""
    if given is None:
        paths = sorted({str(Path(r.config.data.path).absolute()) for r in runs})
        if len(paths) > 1:
            raise ConfigError(f"the runs were trained on different datasets ({', '.join(paths)});"
                              " choose the one to predict with --data")
    path = Path(given or runs[0].config.data.path)
    if not (path / "dataset.json").is_file():
        where = "" if given else " (the run's dataset; choose one with --data)"
        raise DataError(f"prepared dataset {path} not found{where}")
    return PreparedDataset(path)


def shared_fold(runs: Sequence[LoadedRun], given: str | None, split: str) -> str | None:
    """``--fold``, else the runs' training fold where they share one (it names labeled and
    unlabeled cases only; other splits do not depend on it)."""
    if given is not None:
        return given
    folds = sorted({r.config.data.fold or "" for r in runs})
    if len(folds) == 1:
        return folds[0] or None
    if split in ("labeled", "unlabeled"):
        raise ConfigError(f"the runs were trained on different folds ({', '.join(folds)}); "
                          f"choose the {split} cases with --fold")
    return None


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
            if found is not None:
                return found
        return None
    return None if a == b else f"{where} ({a} vs {b})"


def _io(shape: tuple[int, int] | None) -> str:
    return "unknown" if shape is None else f"{shape[0]} channel(s) -> {shape[1]} classes"


def _xyz(values: Sequence[int]) -> str:
    return "x".join(map(str, values))
