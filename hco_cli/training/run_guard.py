"""Guards around a run folder while ``hco train`` works in it.

One writer at a time (the folder's lock, held for the command's life), the temporaries of
checkpoints that a killed run was writing removed, Ctrl-C turned into a line that says how to
continue, and a resumed run's configuration compared with its ``config.yaml``: a user who
edits the file and resumes gets either a refusal naming the changed keys or, with
``--accept-config-changes``, the edited values, recorded in ``run.json``. A resume on a dataset
prepared again since the run started is refused (:mod:`hco_cli.data.identity`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.identity import DatasetIdentity, changed_parts, dataset_identity
from hco_cli.errors import CheckpointError, ConfigError, Interrupted, stop_signal
from hco_cli.locks import hold
from hco_cli.outputs import remove_stale_in
from hco_cli.runs.folder import (
    config_hash,
    read_config_data,
    read_run_info,
    replaced_path,
)
from hco_cli.runs.layout import RunFolder

# Keys a run cannot change half-way: they define its networks, data streams or identity.
FIXED_KEYS = ("model", "framework.name", "optimizer.name", "data.path", "data.fold",
              "data.labeled", "data.labeled_rest", "data.labeled_batch_size",
              "data.unlabeled_batch_size", "data.unlabeled_includes_labeled",
              "data.patch_size", "data.augment", "data.unlabeled_crop",
              "distributed.processes", "run_dir", "init_from", "seed", "phases")
# The length of BCP's pre-training, fixed once it is over (the iterations already trained
# would no longer add up to it, and the self-training's iteration axis would shift).
PRETRAIN_LENGTH = "framework.pretrain_iterations"
_SHOWN = 4


@contextlib.contextmanager
def run_session(run_dir: Path, *, main: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock (on the main process) and explain Ctrl-C on the way out."""
    run_dir = Path(run_dir)
    with hold(run_dir, enabled=main):
        if main:
            for folder in (run_dir, RunFolder(run_dir).checkpoints):
                remove_stale_in(folder)
        try:
            yield
        except Interrupted:
            raise
        except KeyboardInterrupt as exc:
            if not main:
                raise
            raise Interrupted(interrupted_message(run_dir), signum=stop_signal(exc)) from exc


def interrupted_message(run_dir: Path) -> str:
    """What Ctrl-C left: a resumable run, or nothing to resume."""
    if RunFolder(run_dir).checkpoint("last").is_file():
        return (f"interrupted; continue from the last checkpoint with: "
                f"hco train --resume {run_dir}")
    aside = replaced_path(run_dir)
    kept = (f"; the run it replaced is kept in {aside} (to get it back, delete {run_dir}, "
            f"which holds nothing, and rename {aside} to it)" if aside.is_dir() else "")
    return (f"interrupted before the first checkpoint of {run_dir}, so there is nothing to "
            f"resume; the same hco train command starts it again{kept}")


def check_resumable(run_dir: Path) -> None:
    """One line for a ``--resume`` path that holds no run to continue."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run folder {run_dir} does not exist; start a run there with "
                              f"hco train --run-dir {run_dir}")
    if not RunFolder(run_dir).config.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml, no "
                              "checkpoints/last.pt)")
    if not RunFolder(run_dir).checkpoint("last").is_file():
        raise CheckpointError(
            f"run {run_dir} has no checkpoints/last.pt: it stopped before its first checkpoint "
            "and holds nothing to resume; the hco train command that started it starts it "
            "again (no --force needed)")


def check_same_dataset(run_dir: Path, data_path: Path,
                       recorded: DatasetIdentity | None) -> DatasetIdentity:
    """The identity of the dataset at ``data_path``, refused where it was prepared again since
    the run started (its labels, splits, preprocessing or cases differ from what ``last.pt``
    recorded); a checkpoint from before identities were recorded resumes unchecked."""
    current = dataset_identity(data_path)
    changed = changed_parts(recorded, current) if recorded else []
    if changed:
        raise CheckpointError(
            f"{data_path} was prepared again since run {run_dir} started: its "
            f"{' and '.join(changed)} differ from those the run trained on, and one run cannot "
            "train on two datasets; restore that preparation, or start a new run")
    return current


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"data": {"path": x}}`` -> ``{"data.path": x}`` (lists are values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """Dotted keys whose values differ, as ``[before, after]`` (None where a key is absent)."""
    old, new = flatten(before), flatten(after)
    return {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)}


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies below one (``model.n_filters``
    under ``model``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def describe_changes(changes: dict[str, list[Any]]) -> str:
    """The first changed keys as ``key old -> new``, and how many more."""
    shown = [f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:_SHOWN]]
    more = len(changes) - _SHOWN
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def resume_config(run_dir: Path, saved: dict[str, Any], *, accept: bool,
                  iteration: int | None = None) -> tuple[TrainConfig, dict[str, list[Any]]]:
    """The configuration to resume with, and what the user changed in ``config.yaml``.

    The checkpoint's configuration when ``config.yaml`` resolves to the same (their hashes
    agree); otherwise the edited one if ``accept`` and no key of :data:`FIXED_KEYS` changed,
    else a one-line refusal that lists the changed keys. ``run_dir`` is the folder resumed:
    a copied or moved run writes where it is. ``iteration`` (the iterations trained) makes the
    pre-training's length fixed once it is reached.
    """
    run_dir = Path(run_dir)
    source = str(RunFolder(run_dir).checkpoint("last"))
    # A run continues where its folder is now (copied or moved), not where it was started.
    here = {"run_dir": str(run_dir)}
    stored = validate_config({**saved, **here}, source=source)
    yaml_path = RunFolder(run_dir).config
    edited = validate_config({**read_config_data(run_dir), **here}, source=str(yaml_path))
    before, after = stored.model_dump(mode="json"), edited.model_dump(mode="json")
    if config_hash(before) == config_hash(after):
        return stored, {}
    changes = config_changes(before, after)
    fixed = [k for k in changes if under(k, FIXED_KEYS)]
    pretrain = changes.get(PRETRAIN_LENGTH)
    if pretrain and iteration is not None and pretrain[0] is not None and iteration >= pretrain[0]:
        fixed.append(PRETRAIN_LENGTH)
    if fixed:
        raise CheckpointError(
            f"{yaml_path} differs from last.pt in {describe_changes(changes)}; "
            f"{', '.join(fixed)} cannot change within a run: restore config.yaml or start a "
            "new run")
    if not accept:
        raise ConfigError(
            f"{yaml_path} was edited since last.pt ({describe_changes(changes)}); restore it, or "
            f"resume with the edit: hco train --resume {run_dir} --accept-config-changes")
    return edited, changes


def change_history(run_dir: Path, changes: dict[str, list[Any]],
                   iteration: int) -> list[dict[str, Any]]:
    """run.json's ``config_changes`` with this resume's accepted changes appended."""
    try:
        history = list(read_run_info(run_dir).config_changes or [])
    except CheckpointError:
        history = []
    if changes:
        history.append({"iteration": iteration, "changes": changes})
    return history
