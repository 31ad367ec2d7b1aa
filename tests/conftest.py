"""Shared fixtures: the location of real data in ../shared (``$HCO_SHARED``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hco_cli.settings import datasets_dir


def _require(path: Path) -> Path:
    """Return ``path``; skip when it is truly absent, but never in CI (there it must exist)."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing in CI: {path} (set HCO_SHARED)")
        pytest.skip(f"real data not found: {path} (set HCO_SHARED)")
    return path


@pytest.fixture(scope="session")
def la_source() -> Path:
    """The packed Left Atrium dataset (``datasets/la`` with ``unpack`` and ``parts/``)."""
    return _require(datasets_dir() / "la")


@pytest.fixture(scope="session")
def fetal_source() -> Path:
    """The fetal spina bifida atlas: 15 NIfTI cases with 8-class parcellations."""
    return _require(datasets_dir() / "fetal-sb-atlas")


@pytest.fixture(scope="session")
def la_unpacked(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
                ) -> Path:
    """LA parts train-00 and test-00 unpacked once per session into the UA-MT layout; on the
    GPU machine, where ../shared does not travel, ``$HCO_LA_UNPACKED`` names the set the device
    scripts' staging calls unpacked there (``/tmp/la``, all 100 cases): for the GPU tier
    (``-m gpu``) alone, whose one test of real data takes any cases."""
    staged = os.environ.get("HCO_LA_UNPACKED")
    if staged:
        if not (Path(staged) / "2018LA_Seg_Training Set").is_dir():
            pytest.fail(f"HCO_LA_UNPACKED={staged} holds no unpacked LA set")
        return Path(staged)
    la_source: Path = request.getfixturevalue("la_source")
    dest = tmp_path_factory.mktemp("la")
    subprocess.run(
        [sys.executable, str(la_source / "unpack"), str(dest), "la-train-00", "la-test-00"],
        check=True,
        capture_output=True,
    )
    return dest
