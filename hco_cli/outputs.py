"""What hco writes and what it may replace: ownership markers, file modes, stale temporaries.

Every dataset, run and prediction folder holds a marker file, ``.hco.json``, that names its
kind. ``--force`` replaces a folder only when its marker says that hco wrote a folder of that
kind; anything else (a file, a folder of the user's notes, a training run where a dataset was
meant) is left untouched with one line saying why. Outputs take the modes of the user's umask,
as any other tool's do (Python's temporary files are 0600 and folders 0700). Temporaries of
atomic writes that a killed command left behind are removed by the next command that holds
the same output's lock (:mod:`hco_cli.locks`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from hco_cli import __version__
from hco_cli.errors import OutputError

MARKER = ".hco.json"
Kind = Literal["dataset", "run", "predictions", "nnunet-export"]
# tempfile's names: the prefix, 8 characters of [a-z0-9_], the suffix (atomic_path, atomic_dir).
_RANDOM = r"[a-z0-9_]{8}"


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the umask (0644 under umask 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new folder under the umask (0755 under umask 022)."""
    return 0o777 & ~umask()


def write_marker(folder: Path, kind: Kind) -> None:
    """Mark ``folder`` as hco's ``kind`` folder (written whole: temporary name, then rename)."""
    tmp = Path(folder) / f"{MARKER}.part"
    tmp.write_text(json.dumps({"kind": kind, "hco_version": __version__}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, Path(folder) / MARKER)


def read_marker(folder: Path) -> str | None:
    """The kind named by ``folder``'s marker; None when it has no readable marker."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def is_empty(folder: Path) -> bool:
    """True for a folder holding nothing, or nothing but hco's marker."""
    return all(entry.name == MARKER for entry in Path(folder).iterdir())


def check_replaceable(target: Path, kind: Kind, *, option: str) -> None:
    """Refuse ``target`` unless it is absent, an empty folder, or hco's folder of ``kind``.

    Called before anything is written or moved; ``option`` names the command-line option that
    chose ``target`` (e.g. ``--out``), for the message.
    """
    target = Path(target)
    rule = f"--force replaces only a {kind} folder that hco wrote"
    if target.is_symlink():
        raise OutputError(f"{option} {target} is a symbolic link; {rule}, so it is left "
                          f"untouched: give the folder it points to, or another {option}")
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputError(f"{option} {target} is a file; {rule}, so it is left untouched: "
                          f"choose another {option}")
    if is_empty(target):
        return
    found = read_marker(target)
    if found is None:
        raise OutputError(f"{option} {target} was not written by hco (it has no {MARKER}); "
                          f"{rule}, so it is left untouched: move it away or choose another "
                          f"{option}")
    if found != kind:
        raise OutputError(f"{option} {target} holds an hco {found}, not a {kind}; {rule}, so "
                          f"it is left untouched: choose another {option}")


def check_output_file(path: Path, *, option: str) -> None:
    """One line now, before any work, when a file output cannot be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    _check_parent(path, option=option)


def check_distinct_outputs(outputs: Mapping[str, Path | None],
                           inputs: Sequence[Path] = ()) -> None:
    """One line now, before any work, when two output options (``outputs``: option -> path,
    None where not given) name the same file, or one names a file or folder the command reads
    (``inputs``): the last write would silently replace the others, or the input."""
    seen: dict[str, Path] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        for other, earlier in seen.items():
            if _same_path(path, earlier):
                raise OutputError(f"{other} and {option} both name {path}; the second would "
                                  "overwrite the first: give each output its own file")
        for source in inputs:
            if _same_path(path, source):
                raise OutputError(f"{option} {path} is an input of this command ({source}); "
                                  f"writing it would replace it: choose another {option}")
        seen[option] = Path(path)


def _same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same resolved path (symbolic links and
    ``..`` followed), or, where both exist, the same inode (hard links)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is absent (or unreadable): the paths differ
        return False


def check_output_folder(path: Path, *, option: str) -> None:
    """One line now, before any work, when a folder cannot be made (or used) at ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; choose another {option}")
    _check_parent(path, option=option)


def _check_parent(path: Path, *, option: str) -> None:
    ancestor = Path(os.path.abspath(path)).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise OutputError(f"{option} {path}: cannot write in {ancestor} (read-only or not "
                          "permitted)")


def stale_pattern(name: str) -> re.Pattern[str]:
    """Names of the temporary folders that atomic writes of ``name`` make beside it."""
    return re.compile(rf"^\.{re.escape(name)}\.{_RANDOM}\.tmp$")


def remove_stale(target: Path) -> list[Path]:
    """Remove what killed atomic writes of ``target`` left beside it; return what went.

    The caller holds ``target``'s lock, so no living writer owns these. A ``.NAME.old`` folder
    whose ``target`` is missing is the previous output, moved aside by a command killed in the
    middle of replacing it: it is put back instead.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    removed = []
    pattern = stale_pattern(target.name)
    for entry in parent.iterdir():
        if pattern.match(entry.name):
            _remove(entry)
            removed.append(entry)
    old = parent / f".{target.name}.old"
    if old.exists():
        if target.exists():
            _remove(old)
            removed.append(old)
        else:
            os.replace(old, target)
    return removed


def remove_stale_in(folder: Path) -> list[Path]:
    """Remove the temporaries of killed atomic writes of any file in ``folder`` (its owner
    holds the folder's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^\..+\.{_RANDOM}\.(tmp|pt)$")
    removed = [entry for entry in folder.iterdir() if pattern.match(entry.name)]
    for entry in removed:
        _remove(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
