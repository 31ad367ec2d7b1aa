"""Atomic writes: outputs appear whole under their final name or not at all.

Temporaries get the modes of the user's umask before they are renamed into place, so outputs
are as readable to a lab's group as any other tool's (:mod:`hco_cli.outputs`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hco_cli.locks import hold
from hco_cli.outputs import (
    Kind,
    check_replaceable,
    dir_mode,
    file_mode,
    remove_stale,
    write_marker,
)


@contextlib.contextmanager
def atomic_path(target: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    ``suffix`` ends the temporary name, for writers that choose a format by extension.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, file_mode())
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path, *, kind: Kind, force: bool = False,
               option: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder beside ``target``, marked as hco's ``kind``; move it onto
    ``target`` on success.

    Holds ``target``'s lock (:func:`hco_cli.locks.hold`) and first removes what killed earlier
    writes of ``target`` left. An existing ``target`` is replaced only with ``force``, only if
    it is hco's folder of the same ``kind`` (checked again just before the move), and only
    after the new folder is complete.
    """
    target = Path(target)
    with hold(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent))
        try:
            os.chmod(tmp, dir_mode())
            write_marker(tmp, kind)
            yield tmp
            _move_into_place(tmp, target, kind=kind, force=force, option=option)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def _move_into_place(tmp: Path, target: Path, *, kind: Kind, force: bool, option: str) -> None:
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    if not force:
        raise FileExistsError(target)
    check_replaceable(target, kind, option=option)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old)


def is_glob(path: Path | str) -> bool:
    """Whether ``path`` holds a glob wildcard (``*``, ``?``, ``[``): a quoted pattern the
    command expands itself where it names no existing path."""
    return bool(set("*?[") & set(str(path)))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON has neither), through nested
    dicts, lists and tuples (tuples become lists, as JSON writes them anyway)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def between_markers(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with ``block`` (newline-terminated) on the lines between the ``begin`` and
    ``end`` markers, what stood there replaced: a generated table in a hand-written README."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"no {begin} ... {end} block")
    return text[:start + len(begin)] + "\n" + block + text[stop:]


def write_json(target: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(Path(target)) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_text(target: Path, text: str) -> None:
    with atomic_path(Path(target)) as tmp:
        tmp.write_text(text, encoding="utf-8")

