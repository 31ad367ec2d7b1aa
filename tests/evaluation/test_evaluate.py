"""Folder evaluation: pairing, label sources, class discovery, aggregation and error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from hco_cli.data.dataset import CaseGeometry, DatasetInfo, Geometry, Splits
from hco_cli.data.io import write_volume
from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation.evaluate import _present_values, evaluate_folders, parse_classes
from hco_cli.evaluation.metrics import METRICS, evaluate_pair

SPACING = (0.75, 0.75, 2.0)  # exact in float32, as NIfTI stores it


def make_case(seed: int, shape: tuple[int, int, int] = (24, 22, 12)) -> tuple[np.ndarray, ...]:
    """A 3-class label map and an imperfect prediction of it."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint8)
    x0 = int(rng.integers(3, 8))
    gt[x0 : x0 + 9, 4:14, 2:9] = 1
    gt[14:20, 12:19, 3:10] = 2
    gt[2:6, 16:20, 1:5] = 3
    pred = np.roll(gt, int(rng.integers(-1, 2)), axis=0)
    pred[rng.random(shape) > 0.97] = 2
    return pred, gt


def write_pair(root: Path, case: str, pred: np.ndarray, gt: np.ndarray, *,
               pred_spacing: tuple[float, float, float] = SPACING) -> None:
    write_volume(root / "pred" / f"{case}.nii.gz", pred, Geometry(shape=pred.shape,
                                                                  spacing=pred_spacing))
    write_volume(root / "labels" / f"{case}.nii.gz", gt, Geometry(shape=gt.shape,
                                                                  spacing=SPACING))


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    for i in range(3):
        write_pair(tmp_path, f"case{i}", *make_case(i))
    return tmp_path


def test_folder_results_equal_evaluate_pair_per_case(folders: Path) -> None:
    summary = evaluate_folders(folders / "pred", folders / "labels", mm=True, jobs=1)
    assert summary.classes == [1, 2, 3] and summary.spacing_unit == "mm"
    assert [r.case for r in summary.cases] == ["case0", "case1", "case2"]
    for i, result in enumerate(summary.cases):
        want = evaluate_pair(*make_case(i), classes=[1, 2, 3], spacing=SPACING)
        assert result.metrics == want
    for c in ("1", "2", "3"):
        for m in METRICS:
            values = np.array([r.metrics[c][m] for r in summary.cases])
            assert summary.mean[c][m] == pytest.approx(values.mean())
            assert summary.std[c][m] == pytest.approx(values.std(ddof=0))
            assert summary.n[c][m] == 3 and summary.n_excluded[c][m] == 0


def test_parallel_jobs_give_identical_results(folders: Path) -> None:
    serial = evaluate_folders(folders / "pred", folders / "labels", jobs=1)
    parallel = evaluate_folders(folders / "pred", folders / "labels", jobs=3)
    assert serial.to_json_dict() == parallel.to_json_dict()
    assert serial.spacing_unit == "voxel"


def test_classes_option_and_union_of_label_values(tmp_path: Path) -> None:
    pred, gt = make_case(0)
    write_pair(tmp_path, "a", pred, gt)
    gt_b, pred_b = np.where(gt == 3, 0, gt), np.where(pred == 3, 0, pred)
    write_pair(tmp_path, "b", pred_b.astype(np.uint8), gt_b.astype(np.uint8))
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "labels", jobs=1)
    assert summary.classes == [1, 2, 3]  # class 3 only in case a: still evaluated everywhere
    b = summary.cases[1].metrics["3"]
    assert all(math.isnan(b[m]) for m in METRICS)  # absent from both masks: NaN, excluded
    assert summary.n_excluded["3"] == dict.fromkeys(METRICS, 1)
    assert summary.mean["3"]["dice"] == summary.cases[0].metrics["3"]["dice"]
    bcp = evaluate_folders(tmp_path / "pred", tmp_path / "labels", empty="bcp", jobs=1)
    assert bcp.cases[1].metrics["3"] == dict.fromkeys(METRICS, 0.0)
    only = evaluate_folders(tmp_path / "pred", tmp_path / "labels", classes=[2], jobs=1)
    assert only.classes == [2] and list(only.cases[0].metrics) == ["2"]
    assert parse_classes("1, 3") == [1, 3]
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_classes("1;2")


def test_json_and_csv_content(folders: Path) -> None:
    pred, gt = make_case(5)
    pred[pred == 3] = 0  # class 3 missing in the prediction: distances NaN
    write_pair(folders, "case3", pred, gt)
    summary = evaluate_folders(folders / "pred", folders / "labels", jobs=1)
    data = json.loads(json.dumps(summary.to_json_dict(), allow_nan=False))
    case3 = data["metric_per_case"][3]
    assert case3["case"] == "case3"
    assert case3["metrics"]["3"] == {"dice": 0.0, "jaccard": 0.0, "hd95": None, "asd": None}
    assert data["n_excluded"]["3"] == {"dice": 0, "jaccard": 0, "hd95": 1, "asd": 1}
    rows = summary.to_csv_text().splitlines()
    assert rows[0] == "case,class,dice,jaccard,hd95,asd"
    assert len(rows) == 1 + 4 * 3
    assert "case3,3,0.0,0.0,," in rows


def _write_la_layout(root: Path, cases: dict[str, np.ndarray]) -> Path:
    base = root / "la" / "2018LA_Seg_Training Set"
    for case, label in cases.items():
        (base / case).mkdir(parents=True)
        with h5py.File(base / case / "mri_norm2.h5", "w") as handle:
            handle["image"] = np.zeros(label.shape, np.float32)
            handle["label"] = label
    return root / "la"


def test_la_h5_layout_is_a_pool_in_voxels_only(tmp_path: Path) -> None:
    pred, gt = make_case(1)
    la = _write_la_layout(tmp_path, {"A1": gt, "B2": make_case(2)[1]})
    write_volume(tmp_path / "pred" / "A1.nii.gz", pred, Geometry(shape=pred.shape, spacing=SPACING))
    for label_dir in (la, la / "2018LA_Seg_Training Set"):
        summary = evaluate_folders(tmp_path / "pred", label_dir, jobs=1)
        assert [r.case for r in summary.cases] == ["A1"]  # B2 has no prediction: skipped
        assert summary.cases[0].metrics == evaluate_pair(pred, gt, classes=[1, 2, 3])
    with pytest.raises(ConfigError, match="h5 labels store none"):
        evaluate_folders(tmp_path / "pred", la, mm=True)


def _write_prepared(root: Path, labels: dict[str, np.ndarray], spacing: tuple) -> Path:
    dataset = root / "prepared"
    (dataset / "cases").mkdir(parents=True)
    info = DatasetInfo(name="demo", classes={"0": "background", "1": "a", "2": "b", "3": "c",
                                             "4": "d"}, spacing=spacing, source="test",
                       hco_version="0")
    (dataset / "dataset.json").write_text(info.model_dump_json(), encoding="utf-8")
    splits = Splits(labeled=sorted(labels)).model_dump_json()
    (dataset / "splits.json").write_text(splits, encoding="utf-8")
    for case, label in labels.items():
        geometry = Geometry(shape=label.shape, spacing=spacing)
        record = CaseGeometry(case=case, prepared=geometry, original=geometry)
        (dataset / "cases" / f"{case}.json").write_text(record.model_dump_json(), encoding="utf-8")
        np.save(dataset / "cases" / f"{case}_label.npy", label)
    return dataset


def test_prepared_dataset_labels_spacing_and_classes(tmp_path: Path) -> None:
    pred, gt = make_case(3)
    spacing = (1.0, 1.5, 2.5)
    dataset = _write_prepared(tmp_path, {"p1": gt, "p2": make_case(4)[1]}, spacing)
    write_volume(tmp_path / "pred" / "p1.nii.gz", pred, Geometry(shape=pred.shape, spacing=spacing))
    summary = evaluate_folders(tmp_path / "pred", dataset, mm=True, jobs=1)
    assert summary.classes == [1, 2, 3, 4]  # dataset.json class 4 is absent from the labels
    want = evaluate_pair(pred, gt, classes=[1, 2, 3], spacing=spacing)
    assert {k: summary.cases[0].metrics[k] for k in want} == want
    assert math.isnan(summary.cases[0].metrics["4"]["dice"])
    write_volume(tmp_path / "pred" / "p1.nii.gz", pred, Geometry(shape=pred.shape, spacing=SPACING))
    with pytest.raises(DataError, match="case p1: prediction spacing"):
        evaluate_folders(tmp_path / "pred", dataset, jobs=1)
    # a prediction on the scan's own grid against a cropped dataset's labels: said so
    big = np.pad(pred, 2)
    write_volume(tmp_path / "pred" / "p1.nii.gz", big, Geometry(shape=big.shape, spacing=spacing))
    with pytest.raises(DataError, match=r"differs from label shape .*a prepared dataset holds "
                                        r"its labels on the prepared \(cropped, resampled\) "
                                        r"grid.*evaluate against the original label files$"):
        evaluate_folders(tmp_path / "pred", dataset, jobs=1)


def test_missing_pairs_named_or_dropped(folders: Path) -> None:
    (folders / "labels" / "case1.nii.gz").unlink()
    (folders / "pred" / "case2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"no label for 1 prediction\(s\): case1; no prediction "
                                        r"for 1 label\(s\): case2"):
        evaluate_folders(folders / "pred", folders / "labels")
    summary = evaluate_folders(folders / "pred", folders / "labels", allow_missing=True, jobs=1)
    assert [r.case for r in summary.cases] == ["case0"]
    assert summary.dropped == ["case1", "case2"]
    assert summary.to_json_dict()["dropped_cases"] == ["case1", "case2"]


@pytest.mark.parametrize("problem, message", [
    ("shape", "case case1: prediction shape"),
    ("spacing", "case case1: prediction spacing"),
    ("float", "non-integer labels"),
    ("corrupt", "cannot read"),
    ("duplicate", "case case1 appears twice"),
])
def test_bad_inputs_name_the_case_or_file(folders: Path, problem: str, message: str) -> None:
    pred, gt = make_case(1)
    target = folders / "pred" / "case1.nii.gz"
    if problem == "shape":
        write_volume(target, pred[:-1], Geometry(shape=pred[:-1].shape, spacing=SPACING))
    elif problem == "spacing":
        write_pair(folders, "case1", pred, gt, pred_spacing=(0.75, 0.75, 2.5))
    elif problem == "float":
        write_volume(target, pred + 0.5, Geometry(shape=pred.shape, spacing=SPACING))
    elif problem == "corrupt":
        target.write_bytes(b"not a nifti file")
    else:
        write_volume(folders / "pred" / "case1.nrrd", pred, Geometry(shape=pred.shape,
                                                                    spacing=SPACING))
    with pytest.raises(DataError, match=message):
        evaluate_folders(folders / "pred", folders / "labels", jobs=2)


def test_whole_number_float_labels_are_accepted(folders: Path) -> None:
    pred, gt = make_case(1)
    write_volume(folders / "pred" / "case1.nii.gz", pred.astype(np.float32),
                 Geometry(shape=pred.shape, spacing=SPACING))
    summary = evaluate_folders(folders / "pred", folders / "labels", jobs=1)
    assert summary.cases[1].metrics == evaluate_pair(pred, gt, classes=[1, 2, 3])


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="no prediction volumes"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels")
    with pytest.raises(DataError, match="prediction folder not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "labels")
    pred, gt = make_case(0)
    write_volume(tmp_path / "pred" / "a.nii.gz", pred, Geometry(shape=pred.shape, spacing=SPACING))
    with pytest.raises(DataError, match="no label volumes"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels")
    write_volume(tmp_path / "labels" / "a.nii.gz", np.zeros_like(gt),
                 Geometry(shape=gt.shape, spacing=SPACING))
    with pytest.raises(DataError, match="no foreground"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", jobs=1)
    with pytest.raises(ConfigError, match="jobs"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", jobs=0)
    with pytest.raises(ConfigError, match="background"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", classes=[0, 1])


def test_h5_label_without_label_key(tmp_path: Path) -> None:
    base = tmp_path / "la" / "X9"
    base.mkdir(parents=True)
    with h5py.File(base / "mri_norm2.h5", "w") as handle:
        handle["image"] = np.zeros((4, 4, 4), np.float32)
    write_volume(tmp_path / "pred" / "X9.nii.gz", np.zeros((4, 4, 4), np.uint8),
                 Geometry(shape=(4, 4, 4), spacing=SPACING))
    with pytest.raises(DataError, match="no 'label' dataset"):
        evaluate_folders(tmp_path / "pred", tmp_path / "la", jobs=1)


def test_ignored_reference_voxels_count_in_neither_map(folders: Path) -> None:
    pred, gt = make_case(0)
    scribble = gt.copy()
    scribble[:, :8] = 255  # unannotated: whatever is predicted there does not count
    noisy = pred.copy()
    noisy[:, :8] = np.random.default_rng(5).integers(0, 4, noisy[:, :8].shape)
    write_pair(folders, "case0", noisy, scribble)
    summary = evaluate_folders(folders / "pred", folders / "labels", ignore=255, jobs=1,
                               classes=[1, 2, 3])
    kept_pred, kept_gt = np.where(scribble == 255, 0, pred), np.where(scribble == 255, 0, gt)
    assert summary.cases[0].metrics == evaluate_pair(kept_pred, kept_gt, classes=[1, 2, 3])


def test_prepared_references_come_back_in_original_values(tmp_path: Path) -> None:
    pred, gt = make_case(6)
    values = np.array([0, 200, 500, 600, 255], np.uint16)  # index 4: the ignore label
    stored = gt.copy()
    stored[:2] = 4
    dataset = _write_prepared(tmp_path, {"p1": stored}, SPACING)
    info = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    info.update(classes={"0": "bg", "1": "a", "2": "b", "3": "c"}, label_values=[0, 200, 500, 600],
                ignore_label=255)
    (dataset / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    write_volume(tmp_path / "pred" / "p1.nii.gz", values[pred],
                 Geometry(shape=pred.shape, spacing=SPACING))
    summary = evaluate_folders(tmp_path / "pred", dataset, jobs=1)
    assert summary.classes == [200, 500, 600]
    want = evaluate_pair(np.where(stored == 4, 0, pred), np.where(stored == 4, 0, gt),
                         classes=[1, 2, 3])
    assert [summary.cases[0].metrics[str(v)] for v in (200, 500, 600)] == [
        want[str(c)] for c in (1, 2, 3)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int64, np.uint32,
                                   np.float32])
def test_present_values_of_any_label_dtype(dtype: type) -> None:
    volume = np.zeros((6, 5, 4), dtype)
    volume[1, 1, 1], volume[2, 2, 2] = 7, 3
    assert _present_values(volume) == (3, 7)
    assert _present_values(np.zeros(0, dtype)) == ()


def test_present_values_outside_the_histogram_range() -> None:
    assert _present_values(np.array([-2, 0, 5], np.int16)) == (-2, 5)
    assert _present_values(np.array([0, 70000, 1], np.int64)) == (1, 70000)
    assert _present_values(np.array([0, 200, 65], np.uint8)) == (65, 200)  # histogram path
