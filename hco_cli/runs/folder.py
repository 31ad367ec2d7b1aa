"""The run folder's files and the rules for (re)using one; its paths are in layout.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hco_cli.data.plan import PLAN_FILE, read_plan, write_plan
from hco_cli.errors import CheckpointError, ConfigError
from hco_cli.io_utils import write_json, write_text
from hco_cli.outputs import (
    check_output_folder,
    check_replaceable,
    is_empty,
    read_marker,
    write_marker,
)
from hco_cli.runs.files import RunInfo
from hco_cli.runs.layout import RunFolder

# The keys every run.json has (config_changes appears after the first accepted edit).
RUN_INFO_KEYS: tuple[str, ...] = tuple(
    k for k, f in RunInfo.model_fields.items() if f.is_required())


def config_hash(config: dict[str, Any]) -> str:
    """A short digest of a resolved config (as JSON data), stored in every checkpoint."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_stub(run_dir: Path) -> bool:
    """An hco run folder without last.pt: a first attempt that failed or was killed before
    its first checkpoint, holding nothing to resume."""
    return read_marker(run_dir) == "run" and not RunFolder(run_dir).checkpoint("last").is_file()


def replaced_path(run_dir: Path) -> Path:
    """Where ``--force`` keeps the run it replaces (``PARENT/.NAME.replaced``) until the new
    run has written its first checkpoint."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.replaced")


def discard_replaced(run_dir: Path) -> None:
    """Delete the run that ``run_dir`` replaced, once ``run_dir`` holds a checkpoint of its own
    (called under the run's lock)."""
    aside = replaced_path(run_dir)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)


def prepare_run_dir(run_dir: Path, *, force: bool = False) -> str | None:
    """Create ``run_dir``, marked as an hco run, under its lock (held by the caller).

    A non-empty folder is refused unless ``force``, and with ``force`` unless hco wrote it as
    a run; a stub (:func:`is_stub`) is replaced without ``force``. A run replaced with
    ``force`` is not deleted at once but moved to :func:`replaced_path`, and deleted when the
    new run writes its first checkpoint (:func:`discard_replaced`): a replacement that fails
    first (out of memory at its first step, Ctrl-C) loses nothing. Returns a note for the
    user when a stub or a run was replaced.
    """
    run_dir = Path(run_dir)
    check_output_folder(run_dir, option="--run-dir")
    note = None
    if run_dir.is_dir() and not is_empty(run_dir):
        if is_stub(run_dir):
            note = (f"replaced {run_dir}: an earlier attempt stopped before its first "
                    "checkpoint and left nothing to resume")
        elif not force:
            raise ConfigError(
                f"run dir {run_dir} is not empty; continue it with --resume {run_dir}, "
                "overwrite it with --force, or choose another --run-dir"
            )
        check_replaceable(run_dir, "run", option="--run-dir")
        if is_stub(run_dir):
            shutil.rmtree(run_dir)
        else:
            aside = replaced_path(run_dir)
            discard_replaced(run_dir)  # an older replaced run: its replacement checkpointed
            os.replace(run_dir, aside)
            note = (f"replacing {run_dir}: the old run is kept in {aside} until the new one "
                    "writes its first checkpoint")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, "run")
    return note


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(RunFolder(run_dir).config, yaml.safe_dump(config, sort_keys=False))


def copy_plan(run_dir: Path, dataset: Path, patch_size: tuple[int, int, int]) -> None:
    """Copy the dataset's ``plans.json`` into the run, adding the patch size; ``hco predict
    --images`` reads it there. Datasets prepared before plans existed have none to copy."""
    if (Path(dataset) / PLAN_FILE).is_file():
        plan = read_plan(Path(dataset) / PLAN_FILE)
        write_plan(Path(run_dir), plan.model_copy(update={"patch_size": tuple(patch_size)}))


def read_config_data(run_dir: Path) -> dict[str, Any]:
    path = RunFolder(run_dir).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a configuration mapping")
    return data


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    write_json(RunFolder(run_dir).run_json, info.to_json())


def recorded_finished(run_dir: Path) -> bool:
    """Whether ``run.json`` says the run finished; False where it is missing or unreadable (a
    run stopped between writing its final ``last.pt`` and its ``run.json``)."""
    try:
        return read_run_info(run_dir).finished
    except CheckpointError:
        return False


def read_run_info(run_dir: Path) -> RunInfo:
    """The run's run.json, validated; CheckpointError naming the file and the field."""
    path = RunFolder(run_dir).run_json
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no run.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return RunInfo.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "run.json"
        raise CheckpointError(f"{path}: {where}: {first['msg']}") from None
