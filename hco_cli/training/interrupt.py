"""Ctrl-C during a single-process run: stop at the next iteration with a checkpoint there.

Without it, Ctrl-C ends a run at once and the resume starts from the last periodic checkpoint
(``checkpoint_every``, 1000 iterations by default: minutes of GPU time, hours on a CPU). A
KeyboardInterrupt can land anywhere, half-way through an optimizer step, so a checkpoint
cannot be written from where it lands; instead, the first Ctrl-C only asks the training loop
to stop at the next iteration boundary, where the state is whole, save ``last.pt`` there and
then end as Ctrl-C does. A second Ctrl-C ends the run at once, as before.

It applies only where this process owns Ctrl-C alone: the main thread of a run of one
process, with Python's own SIGINT handler in place. A data-parallel run keeps the immediate
stop, since its processes would have to agree on the iteration to save at.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

NOTICE = (b"\nCtrl-C: stopping after this iteration, with a checkpoint there "
          b"(Ctrl-C again to stop at once)\n")


class StopRequest:
    """Whether Ctrl-C asked the run to stop (:meth:`installed` sets it)."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self, *, enabled: bool = True) -> Iterator[None]:
        """Within the block, the first Ctrl-C sets :attr:`requested` (and says so on stderr)
        and puts Python's handler back, so that the second one interrupts; nothing changes
        where not ``enabled``, off the main thread, or where SIGINT has another handler."""
        usable = (enabled and threading.current_thread() is threading.main_thread()
                  and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if not usable:
            yield
            return

        def request(signum: int, frame: FrameType | None) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with contextlib.suppress(OSError):
                os.write(2, NOTICE)

        signal.signal(signal.SIGINT, request)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = ["StopRequest"]
