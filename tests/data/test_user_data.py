"""Users' own data: label maps, ignore labels, image-only crops, several frames a patient."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.labels import build_label_map
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.errors import ConfigError, DataError

SHAPE = (20, 18, 16)
VALUES = (0, 200, 500, 600)


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _body(seed: int) -> np.ndarray:
    """A bright body [4:16, 3:15, 2:14] on a dark, noisy background."""
    image = np.random.default_rng(seed).normal(0.0, 5.0, SHAPE).astype(np.float32)
    image[4:16, 3:15, 2:14] += 100.0
    return image


def _label(values: tuple[int, ...], shift: int = 0) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint16)
    label[5:9, 4:8, 3 + shift:6 + shift] = values[1]
    label[9:12, 8:12, 3:6] = values[2]
    label[12:14, 4:8, 8:12] = values[3]
    return label


def _source(root: Path, n: int = 4, values: tuple[int, ...] = VALUES) -> Path:
    for i in range(n):
        _nifti(root / "images" / f"case{i}_T1.nii.gz", _body(i))
        _nifti(root / "labels" / f"case{i}_T1_seg.nii.gz", _label(values, shift=i % 2))
    return root


@pytest.mark.parametrize("declared", [True, False])
def test_label_values_become_indices_and_the_map_is_recorded(tmp_path: Path,
                                                             declared: bool) -> None:
    root = _source(tmp_path / "src")
    classes = {200: "scar", 500: "myocardium", 600: "cavity"} if declared else None
    prepare_generic(tmp_path / "out", root=root, images="images/*.nii.gz",
                    labels="labels/*.nii.gz", classes=classes, split=SplitOptions(labeled=4))
    data = PreparedDataset(tmp_path / "out")
    assert data.num_classes == 4 and data.ignore_index is None
    info = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert info["label_values"] == [0, 200, 500, 600]
    names = ["scar", "myocardium", "cavity"] if declared else ["class 200", "class 500",
                                                               "class 600"]
    assert info["classes"] == {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}}
    assert data.plan().labels.values == VALUES
    for i in range(4):
        stored = data.label(f"case{i}")
        assert stored.dtype == np.uint8
        expected = np.searchsorted(np.array(VALUES), _label(VALUES, shift=i % 2))
        np.testing.assert_array_equal(stored, expected)
        np.testing.assert_array_equal(data.labels.to_values(stored), _label(VALUES, i % 2))


def test_label_values_that_are_not_declared_or_not_integers_fail_in_one_line(
    tmp_path: Path,
) -> None:
    root = _source(tmp_path / "src")
    with pytest.raises(DataError, match=r"case case(\d): label .*case\1_T1_seg.nii.gz has values "
                                        r"\[600\] that are not classes \(expected \[0, 200, 500"):
        prepare_generic(tmp_path / "out", root=root, images="images/*.nii.gz",
                        labels="labels/*.nii.gz", classes={200: "a", 500: "b"})
    _nifti(root / "labels" / "case2_T1_seg.nii.gz", _label(VALUES).astype(np.float32) + 0.5)
    with pytest.raises(DataError, match=r"case case2: label .* has non-integer values"):
        prepare_generic(tmp_path / "out", root=root, images="images/*.nii.gz",
                        labels="labels/*.nii.gz")
    assert not (tmp_path / "out").exists()


def test_ignore_label_is_stored_as_index_k(tmp_path: Path) -> None:
    root = _source(tmp_path / "src", values=(0, 1, 2, 3))
    for i in range(4):  # scribbles: most voxels unannotated (255)
        label = _label((0, 1, 2, 3), shift=i % 2)
        label[label == 0] = 255
        label[0:2] = 0
        _nifti(root / "labels" / f"case{i}_T1_seg.nii.gz", label)
    prepare_generic(tmp_path / "out", root=root, images="images/*.nii.gz",
                    labels="labels/*.nii.gz", ignore_label=255, split=SplitOptions(labeled=4))
    data = PreparedDataset(tmp_path / "out")
    assert data.num_classes == 4 and data.ignore_index == 4
    assert data.info.ignore_label == 255 and data.plan().labels.ignore_value == 255
    stored = data.label("case0")
    assert set(np.unique(stored)) == {0, 1, 2, 3, 4}
    assert int((stored == 4).sum()) == int((_label((0, 1, 2, 3)) == 0).sum()) - 2 * 18 * 16
    with pytest.raises(ConfigError, match="--ignore-label 2 is also declared as class"):
        prepare_generic(tmp_path / "o2", root=root, images="images/*.nii.gz",
                        labels="labels/*.nii.gz", ignore_label=2, classes={1: "a", 2: "b"})
    only_ignored = np.full(SHAPE, 255, np.uint16)
    _nifti(root / "labels" / "case1_T1_seg.nii.gz", only_ignored)
    with pytest.raises(DataError, match=r"case case1: label .* is empty"):
        prepare_generic(tmp_path / "o3", root=root, images="images/*.nii.gz",
                        labels="labels/*.nii.gz", ignore_label=255,
                        split=SplitOptions(labeled=4))


def test_nnunet_ignore_label_comes_from_dataset_json(tmp_path: Path) -> None:
    root = tmp_path / "Dataset002_Scribbles"
    meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "ignore": 2},
            "numTraining": 3, "file_ending": ".nii.gz"}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for i in range(3):
        label = np.full(SHAPE, 2, np.uint8)
        label[6:10, 6:10, 6:10] = 1
        label[:3] = 0
        _nifti(root / "imagesTr" / f"s_{i:03d}_0000.nii.gz", _body(i))
        _nifti(root / "labelsTr" / f"s_{i:03d}.nii.gz", label)
    prepare_generic(tmp_path / "out", root=root)
    data = PreparedDataset(tmp_path / "out")
    assert data.labels == build_label_map([0, 1], names={0: "background", 1: "a"}, ignore=2)
    assert data.num_classes == 2 and set(np.unique(data.label("s_000"))) == {0, 1, 2}


def test_a_test_case_is_cropped_like_its_unlabeled_twin(tmp_path: Path) -> None:
    root = _source(tmp_path / "src", values=(0, 1, 2, 3))
    twin = _body(7)
    tiny = np.zeros(SHAPE, np.uint8)
    tiny[10, 9, 8] = 1  # a one-voxel label: a label box would crop far inside the body
    _nifti(root / "images" / "twin_T1.nii.gz", twin)
    _nifti(root / "labels" / "twin_T1_seg.nii.gz", tiny)
    _nifti(root / "free" / "freetwin.nii.gz", twin)
    (tmp_path / "test.txt").write_text("twin\n", encoding="utf-8")
    prepare_generic(tmp_path / "out", root=root, images="images/*.nii.gz",
                    labels="labels/*.nii.gz", unlabeled="free/*.nii.gz", crop="otsu",
                    crop_train_by_label=True, crop_margin=1,
                    split=SplitOptions(labeled=2, val=1, test_list=tmp_path / "test.txt"))
    data = PreparedDataset(tmp_path / "out")
    assert data.splits.test == ["twin"] and "freetwin" in data.splits.unlabeled
    body = ((3, 17), (2, 16), (1, 15))
    assert data.geometry("twin").crop == data.geometry("freetwin").crop == body
    assert data.geometry(data.splits.val[0]).crop == body  # validation: the image rule too
    np.testing.assert_array_equal(data.image("twin"), data.image("freetwin"))
    for case in data.splits.labeled:  # training cases with labels: the label box grown by 1
        assert data.geometry(case).crop == ((4, 15), (3, 13), (2, 13)), case


def _acdc(root: Path, patients: int = 6) -> Path:
    """The native ACDC layout: patientXXX/patientXXX_frameYY.nii.gz (+ _gt), two frames."""
    for p in range(1, patients + 1):
        for frame in (1, 12):
            stem = root / f"patient{p:03d}" / f"patient{p:03d}_frame{frame:02d}"
            _nifti(Path(f"{stem}.nii.gz"), _body(p * 100 + frame), (1.5, 1.5, 5.0))
            _nifti(Path(f"{stem}_gt.nii.gz"), _label((0, 1, 2, 3), shift=frame % 2).astype(
                np.uint8), (1.5, 1.5, 5.0))
    return root


def test_two_frames_per_patient_prepare_as_cases_in_grouped_splits(tmp_path: Path) -> None:
    root = _acdc(tmp_path / "acdc")
    images, labels = "patient*/patient*_frame??.nii.gz", "patient*/patient*_frame??_gt.nii.gz"
    summary = prepare_generic(tmp_path / "out", root=root, images=images, labels=labels,
                              split=SplitOptions(labeled=4, val=2, test=4, seed=3,
                                                 folds_labeled=2, folds_unlabeled=1,
                                                 fold_size=2))
    data = PreparedDataset(tmp_path / "out")
    ids = sorted(data.case_ids())
    assert len(ids) == 12 and ids[:2] == ["patient001_frame01", "patient001_frame12"]
    splits = summary.splits
    assert splits.groups["patient003_frame12"] == "patient003"
    for name in ("labeled", "unlabeled", "val", "test"):
        members = getattr(splits, name)
        patients = {c[:10] for c in members}
        assert len(members) == 2 * len(patients), (name, members)
    assert len(splits.test) == 4 and len(splits.labeled) == 4 and len(splits.val) == 2
    for fold in splits.folds.labeled + splits.folds.unlabeled:
        assert len(fold) == 2 * len({c[:10] for c in fold}), fold
    with pytest.raises(ConfigError, match=r"--test 3: whole groups of cases \(--group\) "
                                          r"cannot add up to 3"):
        prepare_generic(tmp_path / "x", root=root, images=images, labels=labels,
                        split=SplitOptions(test=3))
    with pytest.raises(ConfigError, match="--labeled 3 splits the cases of group"):
        prepare_generic(tmp_path / "x", root=root, images=images, labels=labels,
                        split=SplitOptions(labeled=3))
    ungrouped = prepare_generic(tmp_path / "y", root=root, images=images, labels=labels,
                                split=SplitOptions(labeled=3, test=3, group=".+"))
    assert len(ungrouped.splits.test) == 3 and not ungrouped.splits.groups


def test_a_class_that_resampling_loses_stays_in_the_discovered_map(tmp_path: Path) -> None:
    """Eight voxels of value 9 vanish at 4 mm; the map is read from the raw labels, so class 9
    keeps its index (with 0 stored voxels) and the 500s keep theirs."""
    for i in range(3):
        label = _label(VALUES)
        if i == 0:
            label[1:3, 1:3, 1:3] = 9
        _nifti(tmp_path / "images" / f"case{i}.nii.gz", _body(i))
        _nifti(tmp_path / "labels" / f"case{i}.nii.gz", label)
    summary = prepare_generic(tmp_path / "out", root=tmp_path, images="images/*.nii.gz",
                              labels="labels/*.nii.gz", spacing=(4.0, 4.0, 4.0),
                              split=SplitOptions(labeled=3))
    info = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert info["label_values"] == [0, 9, 200, 500, 600]
    assert summary.class_fractions()["class 9 (value 9)"] == 0.0
    data = PreparedDataset(tmp_path / "out")
    stored = np.load(tmp_path / "out" / "cases" / "case0_label.npy")
    assert data.num_classes == 5 and 1 not in np.unique(stored)


@pytest.mark.parametrize(("options", "message"), [
    ({"spacing": (float("nan"), 1.0, 1.0)}, r"^--spacing nan,1,1: spacings must be finite"),
    ({"spacing": (1.0, float("inf"), 1.0)}, r"^--spacing 1,inf,1: spacings must be finite"),
    ({"norm": "ct", "ct_window": (275.0, -125.0)}, r"^--ct-window 275,-125: the low bound"),
    ({"ct_window": (-100.0, 200.0)}, r"^--ct-window applies to --norm ct only; this dataset "
                                     r"is normalised with zscore"),
    ({"crop_margin": 2}, r"^--crop-margin 2 needs --crop"),
])
def test_the_library_refuses_unusable_or_unused_numbers(
        tmp_path: Path, options: dict[str, object], message: str) -> None:
    root = _source(tmp_path / "src", n=2)
    with pytest.raises(ConfigError, match=message):
        prepare_generic(tmp_path / "out", root=root, images="images/*.nii.gz",
                        labels="labels/*.nii.gz", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
