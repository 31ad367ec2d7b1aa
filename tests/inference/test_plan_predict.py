"""Prediction with the persisted plan: label values round-trip, raw scans equal their prepared
twins without the dataset, evaluation against the original (uncropped) label files."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from hco_cli.config import validate_config
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.io import read_volume
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.errors import DataError
from hco_cli.evaluation.evaluate import evaluate_cases
from hco_cli.inference.inputs import dataset_cases, image_cases, target_spacing
from hco_cli.inference.predict import (
    PredictOptions,
    Window,
    predict,
    predict_cases,
    reference_labels,
)
from hco_cli.training.entry import train

CPU = torch.device("cpu")
VALUES = (0, 200, 500, 600)
SHAPE = (40, 36, 14)
SPACING = (0.75, 0.75, 2.0)


class Oracle(nn.Module):
    """Logits -(x - k)^2 for class k: the argmax is the class whose index the image holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-((x - k) ** 2) for k in range(4)], dim=1)


def _scan(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A body (index 1..3 blocks inside a background of 0) and its label in VALUES."""
    rng = np.random.default_rng(seed)
    index = np.zeros(SHAPE, np.uint8)
    x = int(rng.integers(4, 9))
    index[x:x + 12, 6:18, 3:9] = 1
    index[x + 12:x + 20, 10:22, 3:9] = 2
    index[20:30, 20:30, 5:11] = 3
    return index, np.asarray(VALUES, np.uint16)[index]


def _raw(root: Path, n: int = 5) -> Path:
    affine = np.diag([*SPACING, 1.0])
    for i in range(n):
        index, label = _scan(i)
        image = index.astype(np.float32)  # intensity = class index (no normalisation)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), str(root / "images" / f"pat{i}_T2.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labels" / f"pat{i}_T2_gt.nii.gz"))
    return root


def _prepare(tmp_path: Path, **options: object) -> PreparedDataset:
    raw = _raw(tmp_path / "raw")
    prepare_generic(tmp_path / "ds", root=raw, images="images/*.nii.gz",
                    labels="labels/*.nii.gz", split=SplitOptions(labeled=2, val=1, test=2),
                    **options)  # type: ignore[arg-type]
    return PreparedDataset(tmp_path / "ds")


def test_label_values_round_trip_through_prediction_and_evaluation(tmp_path: Path) -> None:
    dataset = _prepare(tmp_path, norm="none", crop="nonzero", crop_margin=2)
    assert dataset.num_classes == 4 and dataset.info.label_values == list(VALUES)
    window = Window(patch_size=(16, 16, 16), stride=(8, 8, 8), num_classes=4)
    out = tmp_path / "preds"
    out.mkdir()
    written = predict_cases(Oracle(), dataset_cases(dataset, "test"), out, window,
                            labels=dataset.labels, device=CPU)
    for result in written:
        labels, _ = read_volume(result.path)
        source, _ = read_volume(tmp_path / "raw" / "labels" / f"{result.case}_T2_gt.nii.gz")
        assert labels.dtype == np.uint16 and set(np.unique(labels)) == set(VALUES)
        np.testing.assert_array_equal(labels, source)  # uncropped, original values
    references = reference_labels(dataset, [c.case for c in written], "test")
    assert all(r.kind == "volume" for r in references.values())
    summary = evaluate_cases({c.case: c.path for c in written}, references,
                             classes=dataset.labels.values[1:], jobs=1)
    assert summary.classes == [200, 500, 600]
    assert all(summary.mean[str(v)]["dice"] == 1.0 for v in (200, 500, 600))
    raw_out = tmp_path / "raw_preds"
    raw_out.mkdir()
    scans = [tmp_path / "raw" / "images" / f"{c.case}_T2.nii.gz" for c in written]
    again = predict_cases(Oracle(), image_cases(scans, dataset.plan()), raw_out, window,
                          labels=dataset.labels, device=CPU)
    for first, second in zip(written, again, strict=True):
        assert second.case == f"{first.case}_T2"  # --images names cases by file
        np.testing.assert_array_equal(read_volume(second.path)[0], read_volume(first.path)[0])


def test_native_spacing_plans_resample_scans_outside_the_training_range(
    tmp_path: Path,
) -> None:
    dataset = _prepare(tmp_path, norm="none")
    plan = dataset.plan()
    assert plan.preprocess.spacing is None and plan.spacing_median == pytest.approx(SPACING)
    assert target_spacing(plan, (0.8, 0.7, 2.2)) is None
    assert target_spacing(plan, (0.3, 0.3, 2.0)) == pytest.approx(SPACING)
    fine = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((60, 60, 14), np.float32),
                             np.diag([0.375, 0.375, 2.0, 1.0])), str(fine))
    [case] = image_cases([fine], plan)
    loaded = case.load()
    assert loaded.geometry.prepared.shape == (30, 30, 14)
    assert loaded.note is not None and "outside the training range" in loaded.note
    assert loaded.geometry.original.shape == (60, 60, 14)


def test_raw_scan_without_the_dataset_equals_its_prepared_twin(tmp_path: Path) -> None:
    dataset = _prepare(tmp_path, spacing=(1.5, 1.5, 2.0), crop="otsu", crop_margin=1)
    config = validate_config({
        "data": {"path": str(dataset.root), "patch_size": [16, 16, 16],
                 "labeled_batch_size": 2, "unlabeled_batch_size": 0, "augment": "none"},
        "model": {"n_filters": 2},
        "framework": {"name": "supervised", "iterations": 1},
        "optimizer": {"name": "sgd"},
        "validation": {"stride": [8, 8, 8], "batch_size": 2, "every": 1},
        "device": "cpu", "run_dir": str(tmp_path / "run"),
    })
    train(config)
    run = tmp_path / "run"
    copied = (run / "plans.json").read_text(encoding="utf-8")
    assert '"patch_size": [\n    16,\n    16,\n    16\n  ]' in copied
    twin = dataset.split("test")[0]
    crop = dataset.geometry(twin).crop
    assert crop is not None and dataset.geometry(twin).prepared.shape != (20, 18, 14)
    prepared = predict(run, PredictOptions(device="cpu", checkpoint="last",
                                           out=tmp_path / "prepared"))
    shutil.move(str(dataset.root), str(tmp_path / "elsewhere"))  # no dataset any more
    scan = tmp_path / "raw" / "images" / f"{twin}_T2.nii.gz"
    raw = predict(run, PredictOptions(device="cpu", checkpoint="last", images=[scan],
                                      out=tmp_path / "from_raw"))
    assert raw.dataset is None and raw.cases[0].note is None
    expected, geometry = read_volume(tmp_path / "prepared" / f"{twin}.nii.gz")
    got, raw_geometry = read_volume(raw.cases[0].path)
    assert raw_geometry == geometry and got.shape == SHAPE
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) <= set(VALUES)
    with pytest.raises(DataError, match=r"prepared dataset .* not found"):
        predict(run, PredictOptions(device="cpu", checkpoint="last", out=tmp_path / "x"))
    assert len(prepared.cases) == 2


def test_evaluation_needs_the_original_labels_of_cropped_cases(tmp_path: Path) -> None:
    dataset = _prepare(tmp_path, norm="none", crop="nonzero")
    plain = PreparedDataset(prepare_generic(
        tmp_path / "plain", root=tmp_path / "raw", images="images/*.nii.gz",
        labels="labels/*.nii.gz", split=SplitOptions(labeled=2, test=2)).out)
    test = dataset.split("test")
    for case in test:
        (tmp_path / "raw" / "labels" / f"{case}_T2_gt.nii.gz").unlink()
    with pytest.raises(DataError, match=rf"case {test[0]}: original label file .* not found "
                                        r"\(the case was cropped or resampled"):
        reference_labels(dataset, test, "test")
    kept = [c for c in plain.split("test") if c in test]  # neither cropped nor resampled
    assert kept == test
    assert all(r.kind == "prepared" for r in reference_labels(plain, kept, "test").values())
