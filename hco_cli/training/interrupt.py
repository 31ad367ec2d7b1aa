"""Ctrl-C during a run: stop at an iteration boundary with a checkpoint there.

Without it, Ctrl-C ends a run at once and the resume starts from the last periodic checkpoint
(``checkpoint_every``, 1000 iterations by default: minutes of GPU time, hours on a CPU). A
KeyboardInterrupt can land anywhere, half-way through an optimizer step, so a checkpoint
cannot be written from where it lands; instead, the first Ctrl-C only asks the training loop
to stop at the next iteration boundary, where the state is whole, save ``last.pt`` there and
then end as Ctrl-C does. A second Ctrl-C ends the run at once, as before.

One process: the run's main thread owns Ctrl-C (:meth:`StopRequest.installed`). A
data-parallel run of ``hco train --gpus N`` (:mod:`~hco_cli.training.launch`): the launching
process owns it and passes the request to its workers through a shared event; the workers
ignore SIGINT and agree every ``log_every`` iterations on whether any of them has seen the
request, so that all of them save and stop at the same iteration. Under torchrun, which owns
the signals of its workers, Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Protocol

NOTICE = (b"\nCtrl-C: stopping after this iteration, with a checkpoint there "
          b"(Ctrl-C again to stop at once)\n")


def launcher_notice(every: int | None) -> bytes:
    """What the launching process of a data-parallel run says on the first Ctrl-C (``every``:
    the run's ``log_every``, where known)."""
    within = f"{every} iterations" if every is not None else "log_every iterations"
    return (f"\nCtrl-C: stopping within {within}, where the processes next agree, with a "
            "checkpoint there (Ctrl-C again to stop at once)\n").encode()


class SharedFlag(Protocol):
    """A flag other processes can see (``multiprocessing.Event``)."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...


class StopRequest:
    """Whether the run was asked to stop: by a Ctrl-C that :meth:`installed` caught, or through
    ``shared``, the flag the launching process of a data-parallel run sets (in the workers)."""

    def __init__(self, shared: SharedFlag | None = None) -> None:
        self.shared = shared
        self._asked = False

    @property
    def requested(self) -> bool:
        return self._asked or (self.shared is not None and self.shared.is_set())

    @contextlib.contextmanager
    def installed(self, *, enabled: bool = True, notice: bytes = NOTICE) -> Iterator[None]:
        """Within the block, the first Ctrl-C sets :attr:`requested` (and ``shared``), writes
        ``notice`` to stderr and puts Python's handler back, so that the second one interrupts;
        nothing changes where not ``enabled``, off the main thread, or where SIGINT has another
        handler."""
        usable = (enabled and threading.current_thread() is threading.main_thread()
                  and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if not usable:
            yield
            return

        def request(signum: int, frame: FrameType | None) -> None:
            self._asked = True
            if self.shared is not None:
                self.shared.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with contextlib.suppress(OSError):
                os.write(2, notice)

        signal.signal(signal.SIGINT, request)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = ["NOTICE", "SharedFlag", "StopRequest", "launcher_notice"]
