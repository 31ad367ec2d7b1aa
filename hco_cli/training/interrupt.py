"""Ctrl-C or SIGTERM during a run: stop at an iteration boundary with a checkpoint there.

Without it, Ctrl-C (or a cluster's SIGTERM at a time limit or preemption, or ``kill``) ends
a run at once and the resume starts from the last periodic checkpoint (``checkpoint_every``,
1000 iterations by default: minutes of GPU time, hours on a CPU). A KeyboardInterrupt can land
anywhere, half-way through an optimizer step, so a checkpoint cannot be written from where it
lands; instead, the first SIGINT or SIGTERM only asks the training loop to stop at the next
iteration boundary, where the state is whole, save ``last.pt`` there and then end as Ctrl-C
does, with 128 plus the signal's number as its exit code (130 for Ctrl-C, 143 for SIGTERM,
what a shell reports for a process the signal ended). After it both signals are back at
their defaults: a second one of either ends the run at once, as before (and a supervisor that
escalates to SIGTERM, as ``hco sweep`` does after 60 s, still ends a run that does not stop).

One process: the run's main thread owns the signals (:meth:`StopRequest.installed`). A
data-parallel run of ``hco train --gpus N`` (:mod:`~hco_cli.training.launch`): the launching
process owns them and passes the request to its workers through a shared event; the workers
ignore both (Slurm signals every process of a job) and agree every ``log_every`` iterations on
whether any of them has seen the request, so that all of them save and stop at the same
iteration. Under torchrun (or another launcher that starts the ranks itself) each rank catches
the signals and the ranks agree in the same way. torchrun starts its workers in sessions of
their own, so a terminal's Ctrl-C reaches only the agent, which passes the signal on to every
worker and kills them ``--shutdown_timeout`` seconds later (30 by default); Slurm signals the
agent and the workers alike. A worker therefore sees the signal once or twice in quick
succession and keeps its handlers to the end (:meth:`StopRequest.installed` with
``keep=True``): its escalation is the agent's kill, not a second signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Protocol

from hco_cli.errors import Stopped

NOTICE = "stopping after this iteration, with a checkpoint there"
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def agreement_notice(every: int | None) -> str:
    """What a data-parallel run says on the first signal, from hco's launching process or from
    torchrun's rank 0 (``every``: the run's ``log_every``, where known)."""
    within = f"{every} iterations" if every is not None else "log_every iterations"
    return f"stopping within {within}, where the processes next agree, with a checkpoint there"


class SharedFlag(Protocol):
    """A flag other processes can see (``multiprocessing.Event``)."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...


class StopRequest:
    """Whether the run was asked to stop: by a signal that :meth:`installed` caught, or through
    ``shared``, the flag the launching process of a data-parallel run sets (in the workers)."""

    def __init__(self, shared: SharedFlag | None = None) -> None:
        self.shared = shared
        self._asked = False
        self.signum: int | None = None  # the signal that asked, where this process caught it

    @property
    def requested(self) -> bool:
        return self._asked or (self.shared is not None and self.shared.is_set())

    def stopped(self) -> Stopped:
        """What a run that stopped on this request raises: the signal this process caught,
        else (a worker told through ``shared``) Ctrl-C's."""
        return Stopped(signum=self.signum or signal.SIGINT)

    @contextlib.contextmanager
    def installed(self, *, enabled: bool = True, notice: str | None = NOTICE,
                  keep: bool = False) -> Iterator[None]:
        """Within the block, the first SIGINT or SIGTERM sets :attr:`requested` (and
        ``shared``), writes ``notice`` to stderr (where given) and puts both signals' handlers
        back, so that the next one interrupts (SIGINT) or ends the process (SIGTERM); with
        ``keep`` the handlers stay to the end of the block and later signals change nothing.
        Off the main thread or where not ``enabled`` nothing changes, and a signal is left
        alone where it has another handler than Python's default (a job runner's own)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        defaults: dict[signal.Signals, Any] = {signal.SIGINT: signal.default_int_handler,
                                               signal.SIGTERM: signal.SIG_DFL}
        owned = [s for s, handler in defaults.items() if signal.getsignal(s) is handler]

        def restore() -> None:
            for signum in owned:
                signal.signal(signum, defaults[signum])

        def request(signum: int, frame: FrameType | None) -> None:
            if self._asked and keep:
                return
            self._asked = True
            self.signum = signum
            if self.shared is not None:
                self.shared.set()
            if not keep:
                restore()
            if notice is None:
                return
            name = _NAMES.get(signal.Signals(signum), signal.Signals(signum).name)
            again = "" if keep else " (Ctrl-C again to stop at once)"
            with contextlib.suppress(OSError):
                os.write(2, f"\n{name}: {notice}{again}\n".encode())

        for signum in owned:
            signal.signal(signum, request)
        try:
            yield
        finally:
            restore()


__all__ = ["NOTICE", "SharedFlag", "StopRequest", "agreement_notice"]
