"""Fixtures of the planning tests: the synthetic anisotropic dataset, prepared once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.planning import anisotropic


@pytest.fixture(scope="session")
def aniso_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aniso")
    anisotropic.prepare(anisotropic.write_scans(root / "raw"), root / "data")
    return root / "data"
