"""One writer per output: an exclusive lock on a run, dataset, prediction or sweep folder.

The lock is ``flock`` on a file beside the folder (``PARENT/.NAME.lock``, so that replacing the
folder keeps it), held for the command's life and removed at its end. The kernel releases it
when a process dies, even by SIGKILL, so a lock is never stale; a leftover file is taken over
by the next command. A second writer gets one line naming the holder's process id.

Processes that a holder starts for the same work (``hco train --gpus N``'s workers) inherit the
list of held locks in ``HCO_HELD_LOCKS`` and do not lock again; so does a nested call in the
same process. Without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from hco_cli.errors import OutputInUseError
from hco_cli.outputs import dir_mode, file_mode

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

HELD_ENV = "HCO_HELD_LOCKS"


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``PARENT/.NAME.lock``."""
    absolute = Path(os.path.abspath(target))
    return absolute.parent / f".{absolute.name}.lock"


@contextlib.contextmanager
def hold(target: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``target``'s lock inside the block; OutputInUseError if another process has it.

    Missing parent folders are made for the lock file and removed again (when still empty)
    if ``target`` does not exist at the end, so a refused command leaves no trace.
    """
    key = str(lock_path(target))
    held = [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]
    if not enabled or fcntl is None or key in held:
        yield
        return
    made = _make_parents(Path(key).parent)
    try:
        fd = _acquire(Path(key), Path(target))
    except BaseException:
        _remove_empty(made)
        raise
    previous = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = os.pathsep.join([*held, key])
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = previous
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key)
        os.close(fd)
        if not Path(target).exists():
            _remove_empty(made)


def abandoned(target: Path) -> bool:
    """Whether ``target``'s lock file is there but no process holds it: its holder died (a
    command that ends removes the file). False without ``fcntl``."""
    path = lock_path(target)
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _acquire(path: Path, target: Path) -> int:
    """Lock ``path`` (made if missing); retry when a releasing holder unlinked it meanwhile."""
    assert fcntl is not None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise OutputInUseError(f"{target} is in use by {who}; wait for it to end or stop "
                                   "it (one hco command writes a folder at a time)") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=dir_mode())
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return
