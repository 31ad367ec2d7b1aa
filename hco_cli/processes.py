"""Processes that must not outlive the one that started them.

A sweep's run and a data-parallel run's workers would otherwise keep training, unwatched,
when their parent dies in a way that lets it tell no one (``kill -9``, the OOM killer). On
Linux the kernel sends the child a signal then (``PR_SET_PDEATHSIG``, set before the child's
program starts: :func:`signal_on_parent_death`). Other systems (macOS) have no such call; there
a child that runs Python code of its own (a data-parallel worker; an ``hco`` command a sweep
started, told its parent through :data:`PARENT_ENV`) watches its parent from a thread
(:func:`stop_with_parent`): the same signal, within a second of the parent's death.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # prctl(2)
# The pid of the process that started an hco command and must not be outlived by it (hco
# sweep sets it for its runs); the command reads it once, and takes it out of its environment
# so that its own children do not inherit a parent that is not theirs.
PARENT_ENV = "HCO_STOP_WITH_PARENT"


def libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, None elsewhere. Look it up before a fork, never in the forked
    child, where loading could wait on a lock another thread held at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def signal_on_parent_death(sig: signal.Signals, *, parent: int,
                           prctl: Callable[..., int] | None) -> None:
    """Have the kernel send this process ``sig`` when its parent (pid ``parent``) dies; if it
    died already, send it now. Nothing where ``prctl`` is None (not Linux)."""
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # the parent died before the call above
        os.kill(os.getpid(), sig)


def stop_with_parent(sig: signal.Signals, *, parent: int, prctl: Callable[..., int] | None,
                     interval: float = 1.0) -> threading.Thread | None:
    """This process gets ``sig`` when its parent (pid ``parent``) dies, from a process that
    runs Python already (never from a ``preexec_fn``: a thread started there dies with the
    exec). With ``prctl`` (Linux) the kernel's :func:`signal_on_parent_death`; without, a
    daemon thread that looks at the parent pid every ``interval`` seconds and, once it has
    changed (the child was handed to init or a subreaper), sends ``sig`` to this process and
    ends; that thread is returned."""
    if prctl is not None:
        signal_on_parent_death(sig, parent=parent, prctl=prctl)
        return None

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), sig)

    watcher = threading.Thread(target=watch, name="hco-parent-watch", daemon=True)
    watcher.start()
    return watcher


def stop_with_parent_from_env(sig: signal.Signals, *, prctl: Callable[..., int] | None,
                              interval: float = 1.0) -> threading.Thread | None:
    """:func:`stop_with_parent` for the parent :data:`PARENT_ENV` names, which is taken out of
    the environment; nothing where it is unset or not a pid."""
    value = os.environ.pop(PARENT_ENV, None)
    if value is None or not value.isdigit():
        return None
    return stop_with_parent(sig, parent=int(value), prctl=prctl, interval=interval)


__all__ = ["PARENT_ENV", "libc_prctl", "signal_on_parent_death", "stop_with_parent",
           "stop_with_parent_from_env"]
