"""Process-wide settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "HCO_SHARED"


def shared_dir() -> Path:
    """The folder holding the shared datasets, ``$HCO_SHARED`` or ``../shared``."""
    return Path(os.environ.get(SHARED_ENV, "../shared")).expanduser()


def datasets_dir() -> Path:
    return shared_dir() / "datasets"
