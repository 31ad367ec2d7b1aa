"""Synthetic phantoms: deterministic by seed, every class present, unlabeled without label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import prepare_synthetic


def _arrays(root: Path) -> dict[str, np.ndarray]:
    data = PreparedDataset(root)
    out = {f"{c}/image": np.asarray(data.image(c)) for c in data.case_ids()}
    out |= {f"{c}/label": np.asarray(data.label(c)) for c in data.case_ids() if data.has_label(c)}
    return out


def test_same_seed_same_arrays_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"labeled": 2, "unlabeled": 2, "test": 1, "shape": (32, 32, 24)}
    prepare_synthetic(tmp_path / "a", seed=7, **kwargs)  # type: ignore[arg-type]
    prepare_synthetic(tmp_path / "b", seed=7, workers=2, **kwargs)  # type: ignore[arg-type]
    prepare_synthetic(tmp_path / "c", seed=8, **kwargs)  # type: ignore[arg-type]
    a, b, c = _arrays(tmp_path / "a"), _arrays(tmp_path / "b"), _arrays(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["syn_000/image"], c["syn_000/image"])
    assert not np.array_equal(a["syn_000/label"], c["syn_000/label"])


def test_layout_classes_and_splits(tmp_path: Path) -> None:
    summary = prepare_synthetic(tmp_path / "s", val=1, classes=3, shape=(40, 36, 32))
    data = PreparedDataset(tmp_path / "s")
    assert data.info.classes == {"0": "background", "1": "organ 1", "2": "organ 2",
                                 "3": "organ 3"}
    assert data.info.normalization == "zscore" and data.info.spacing == (1.0, 1.0, 1.0)
    splits = data.splits
    assert (len(splits.labeled), len(splits.unlabeled), len(splits.val), len(splits.test)) == (
        4, 8, 1, 4)
    assert not any(data.has_label(c) for c in splits.unlabeled)
    for case in splits.labeled + splits.val + splits.test:
        label = data.label(case)
        assert label.shape == (40, 36, 32)
        assert set(np.unique(label)) == {0, 1, 2, 3}
        image = data.image(case)
        assert image.shape == (1, 40, 36, 32) and abs(float(image.mean())) < 1e-4
    assert summary.shape_range() == ((40, 36, 32), (40, 36, 32))
    assert sum(summary.class_fractions().values()) == pytest.approx(1.0)
