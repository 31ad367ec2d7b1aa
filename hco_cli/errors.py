"""One hierarchy for every failure a user can cause and fix.

The CLI turns any :class:`HcoError` (and any ``OSError``) into one red line and exit code 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal


class HcoError(Exception):
    """Base class of expected, user-actionable failures."""


class ConfigError(HcoError):
    """A configuration value or command-line option is invalid."""


class DataError(HcoError):
    """Input data is missing, unreadable or inconsistent."""


class DatasetExistsError(DataError):
    """The output dataset exists and --force was not given."""


class OutputError(HcoError):
    """An output path cannot be written, or is not hco's to replace."""


class OutputInUseError(OutputError):
    """Another hco process holds the lock of an output folder."""


class CheckpointError(HcoError):
    """A checkpoint or run folder is missing or cannot be read."""


class TrainingDivergedError(HcoError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class MissingExtraError(HcoError):
    """An optional dependency (an extra) is not installed."""


class Stopped(KeyboardInterrupt):
    """A run that stopped on a signal (Ctrl-C's SIGINT, or SIGTERM) with its checkpoint saved.

    A KeyboardInterrupt still, so that callers that stop on Ctrl-C keep doing so; ``signum``
    gives the exit code, 128 plus the signal's number as shells report a process the signal
    ended (130 for Ctrl-C, 143 for SIGTERM), so that a job runner that reads the code sees which
    signal it was.
    """

    def __init__(self, *args: object, signum: int = signal.SIGINT) -> None:
        super().__init__(*args)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self)


class Interrupted(Stopped):
    """Ctrl-C (or SIGTERM), with a message saying what was kept and how to continue."""


def stop_signal(exc: BaseException) -> int:
    """The signal an interrupt stands for: a :class:`Stopped`'s own, else Ctrl-C's SIGINT (a
    bare KeyboardInterrupt)."""
    return int(exc.signum) if isinstance(exc, Stopped) else int(signal.SIGINT)


def exit_code(exc: BaseException) -> int:
    """The exit code of a command the interrupt ``exc`` ended: 128 plus its signal's number."""
    return 128 + stop_signal(exc)
