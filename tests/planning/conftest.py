"""Fixtures of the planning tests: the synthetic anisotropic dataset and the paper's LA and
fetal datasets, prepared once per session (as the study scripts prepare them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hco_cli.data.prepare import SplitOptions, prepare_generic, prepare_la
from tests.planning import anisotropic

FETAL_CLASSES = {i: f"class {i}" for i in range(1, 9)}


@pytest.fixture(scope="session")
def aniso_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aniso")
    anisotropic.prepare(anisotropic.write_scans(root / "raw"), root / "data")
    return root / "data"


@pytest.fixture(scope="session")
def la_prepared(la_unpacked: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LA parts train-00 and test-00 (8 labeled + 2 unlabeled training cases)."""
    out = tmp_path_factory.mktemp("la-plan") / "la"
    prepare_la(la_unpacked, out, split=SplitOptions(labeled=8), allow_missing=True)
    return out


@pytest.fixture(scope="session")
def fetal_prepared(fetal_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fetal atlas as scripts/device_fetal_study.sh prepares it (1.2 mm, Otsu crop)."""
    out = tmp_path_factory.mktemp("fetal-plan") / "fetal"
    prepare_generic(out, root=fetal_source, images="*/srr.nii.gz",
                    labels="*/parcellation.nii.gz", classes=FETAL_CLASSES,
                    spacing=(1.2, 1.2, 1.2), crop="otsu", crop_margin=4,
                    split=SplitOptions(test=5, val=2, labeled=4, folds_labeled=2,
                                       folds_unlabeled=2, fold_size=2))
    return out
