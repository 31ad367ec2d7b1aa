"""Processes that must not outlive the one that started them (Linux: ``PR_SET_PDEATHSIG``).

A sweep's run and a data-parallel run's workers would otherwise keep training, unwatched,
when their parent dies in a way that lets it tell no one (``kill -9``, the OOM killer). Other
systems have no such call; there the children are stopped only by a parent that lives to do it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # prctl(2)


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


__all__ = ["libc_prctl", "signal_on_parent_death"]
