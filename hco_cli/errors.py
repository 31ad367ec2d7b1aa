"""One hierarchy for every failure a user can cause and fix.

The CLI turns any :class:`HcoError` into one red line and a non-zero exit code; anything else
is a bug and keeps its traceback.
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


class CheckpointError(HcoError):
    """A checkpoint or run folder is missing or cannot be read."""


class TrainingDivergedError(HcoError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class MissingExtraError(HcoError):
    """An optional dependency (an extra) is not installed."""
