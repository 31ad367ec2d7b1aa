"""One hierarchy for every failure a user can cause and fix.

The CLI turns any :class:`HcoError` (and any ``OSError``) into one red line and exit code 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what was kept and how to continue.

    A KeyboardInterrupt still, so that callers that stop on Ctrl-C keep doing so.
    """
