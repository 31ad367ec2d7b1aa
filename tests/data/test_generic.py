"""Generic folders: glob case ids, the fetal atlas (real NIfTI), nnU-Net/MSD folders, label
maps and ignore labels, image-only cropping, several frames a patient (grouped splits)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.data.sources.generic import case_ids, match_cases, parse_classes, pattern_regex
from hco_cli.errors import ConfigError, DataError

FETAL_IMAGES = "*GA2[12]_*/srr.nii.gz"
FETAL_LABELS = "*GA2[12]_*/parcellation.nii.gz"


@pytest.mark.parametrize(("pattern", "paths", "ids"), [
    ("images/subject[1-4]*_DE.nii.gz",
     ["images/subject1_DE.nii.gz", "images/subject10_DE.nii.gz", "images/subject11_DE.nii.gz"],
     ["subject1", "subject10", "subject11"]),
    ("labels/subject1*_DE_manual.nii.gz", ["labels/subject1_DE_manual.nii.gz"], ["subject1"]),
    ("labels/*.nii.gz", ["labels/s1_DE_manual.nii.gz", "labels/s11_DE_manual.nii.gz"],
     ["s1", "s11"]),
    ("patient*/patient*_frame??.nii.gz",
     ["patient001/patient001_frame01.nii.gz", "patient001/patient001_frame12.nii.gz",
      "patient002/patient002_frame01.nii.gz"],
     ["patient001_frame01", "patient001_frame12", "patient002_frame01"]),
    ("imagesTr/*_0000.nii.gz", ["imagesTr/case_001_0000.nii.gz", "imagesTr/case_002_0000.nii.gz"],
     ["case_001", "case_002"]),
    ("imagesTr/*.nii.gz", ["imagesTr/case_001_0000.nii.gz"], ["case_001"]),
    ("img_*.nii.gz", ["img_017.nii.gz", "img_101.nii.gz"], ["img_017", "img_101"]),
    ("dir/*/srr.nii.gz", ["dir/fetal_GA21/srr.nii.gz", "dir/fetal_GA22/srr.nii.gz"],
     ["fetal_GA21", "fetal_GA22"]),
    ("P_*/*/*", ["P_0001/study/series", "P_0002/study/series"],
     ["P_0001_study_series", "P_0002_study_series"]),
    ("*/*/img.nii.gz", ["a/x/img.nii.gz", "b/x/img.nii.gz", "b/y/img.nii.gz"],
     ["a_x", "b_x", "b_y"]),
])
def test_case_ids_are_file_stems_without_their_shared_suffix(
    pattern: str, paths: list[str], ids: list[str]
) -> None:
    assert case_ids(pattern, paths) == ids


@pytest.mark.parametrize(("pattern", "path", "case"), [
    ("PANCREAS_*/*/*", "PANCREAS_0001/study/series", "0001"),
    ("label*.nii.gz", "label0001.nii.gz", "0001"),
    ("a/GA2[12]_*/x.nrrd", "a/GA21_op/x.nrrd", "1_op"),
])
def test_wildcard_ids_of_the_pancreas_layout(pattern: str, path: str, case: str) -> None:
    match = pattern_regex(pattern).match(path)
    assert match is not None and match.group("id") == case


def test_match_cases_strips_extension_and_refuses_duplicates(tmp_path: Path) -> None:
    for name in ("a.nii.gz", "b.nii.gz", "b.nrrd"):
        (tmp_path / name).write_bytes(b"")
    assert match_cases("*.nii.gz", base=tmp_path, option="--images") == {
        "a": tmp_path / "a.nii.gz", "b": tmp_path / "b.nii.gz"}
    with pytest.raises(DataError, match="case b: duplicate case id"):
        match_cases("*", base=tmp_path, option="--images")
    with pytest.raises(DataError, match="matches no file"):
        match_cases("*.mha", base=tmp_path, option="--images")
    with pytest.raises(ConfigError, match="no wildcard"):
        pattern_regex("a.nii.gz")


def test_parse_classes() -> None:
    assert parse_classes("1=white matter, 2=ventricles") == {
        0: "background", 1: "white matter", 2: "ventricles"}
    with pytest.raises(ConfigError, match="VALUE=NAME"):
        parse_classes("1:wm")


def test_fetal_atlas_headers_and_resampling(fetal_source: Path, tmp_path: Path) -> None:
    native = prepare_generic(tmp_path / "native", root=fetal_source, images=FETAL_IMAGES,
                             labels=FETAL_LABELS, norm="none")
    assert len(native.cases) == 2
    data = PreparedDataset(tmp_path / "native")
    assert data.info.spacing == pytest.approx((0.8, 0.8, 0.8), abs=1e-5)
    assert data.num_classes == 9 and len(data.info.classes) == 9
    case = "fetal_SB_atlas_GA21_notoperated"
    source = nib.load(str(fetal_source / case / "parcellation.nii.gz"))
    np.testing.assert_array_equal(data.label(case), np.asarray(source.dataobj))
    srr = nib.load(str(fetal_source / case / "srr.nii.gz"))
    np.testing.assert_array_equal(data.image(case)[0], np.asarray(srr.dataobj, np.float32))

    prepare_generic(tmp_path / "iso", root=fetal_source, images=FETAL_IMAGES,
                    labels=FETAL_LABELS, spacing=(1.0, 1.0, 1.0),
                    classes={1: "white matter", 8: "corpus callosum"} | {
                        v: f"c{v}" for v in range(2, 8)})
    iso = PreparedDataset(tmp_path / "iso")
    geometry = iso.geometry(case)
    assert geometry.original.shape == (135, 189, 155)
    assert geometry.prepared.shape == (108, 151, 124)
    assert geometry.prepared.spacing == (1.0, 1.0, 1.0)
    assert geometry.prepared.origin == geometry.original.origin
    assert set(np.unique(iso.label(case))) == set(range(9))
    assert iso.info.classes["1"] == "white matter"
    image = iso.image(case)
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1.0) < 1e-3


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _blob_case(seed: int, shape: tuple[int, int, int] = (20, 18, 16)) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 20.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[5:12, 4:10, 3:9] = 1
    label[8:10, 6:8, 5:7] = 2
    return image, label


def test_nnunet_folder_with_two_channels(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Toy"
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": 4, "file_ending": ".nii.gz"}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for i in range(6):
        image, label = _blob_case(i)
        split = "Tr" if i < 4 else "Ts"
        for channel in range(2):
            _nifti(root / f"images{split}" / f"toy_{i:03d}_{channel:04d}.nii.gz", image + channel)
        _nifti(root / f"labels{split}" / f"toy_{i:03d}.nii.gz", label)
    summary = prepare_generic(tmp_path / "out", root=root,
                              split=SplitOptions(labeled=2, seed=1, folds_labeled=2, fold_size=1,
                                                 folds_unlabeled=1))
    data = PreparedDataset(tmp_path / "out")
    assert data.info.channels == 2 and data.info.classes == {"0": "background", "1": "a",
                                                             "2": "b"}
    assert data.splits.test == ["toy_004", "toy_005"]
    assert len(data.splits.labeled) == 2 and len(data.splits.unlabeled) == 2
    assert data.image("toy_000").shape == (2, 20, 18, 16)
    assert len(summary.splits.folds.labeled) == 2
    with pytest.raises(ConfigError, match="already defines its test cases"):
        prepare_generic(tmp_path / "out2", root=root, split=SplitOptions(test=1))


def test_no_case_left_to_label_names_the_cause_not_an_option_never_given(
        tmp_path: Path) -> None:
    for i in range(2):
        image, label = _blob_case(i)
        _nifti(tmp_path / "img" / f"c{i}.nii.gz", image)
        _nifti(tmp_path / "lab" / f"c{i}.nii.gz", label)
    globs = {"images": str(tmp_path / "img" / "*.nii.gz"),
             "labels": str(tmp_path / "lab" / "*.nii.gz")}
    with pytest.raises(ConfigError, match=r"^no labeled case is left to train on after 2 test "
                                          r"cases \(0 training cases, 0 with labels\)$"):
        prepare_generic(tmp_path / "out", **globs, split=SplitOptions(test=2))
    with pytest.raises(ConfigError, match="--labeled 2: only 1 training cases"):
        prepare_generic(tmp_path / "out", **globs, split=SplitOptions(test=1, labeled=2))
    assert not (tmp_path / "out").exists()


def _body_case(seed: int, shape: tuple[int, int, int] = (20, 18, 16)) -> tuple[np.ndarray, ...]:
    """A bright body [4:16, 3:15, 2:14] on a dark noisy background, a label inside it."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 5.0, shape).astype(np.float32)
    image[4:16, 3:15, 2:14] += 100.0
    label = np.zeros(shape, np.uint8)
    label[5:12, 4:10, 3:9] = 1
    label[8:10, 6:8, 5:7] = 2
    return image, label


def test_crop_boxes_come_from_the_image_except_for_labeled_training_cases(
    tmp_path: Path,
) -> None:
    for i in range(5):
        image, label = _body_case(i)
        _nifti(tmp_path / "src" / f"img_{i}.nii.gz", image, (2.0, 2.0, 2.0))
        _nifti(tmp_path / "src" / f"seg_{i}.nii.gz", label, (2.0, 2.0, 2.0))
    image, _ = _body_case(9)
    _nifti(tmp_path / "src" / "extra" / "u_9.nii.gz", image, (2.0, 2.0, 2.0))
    summary = prepare_generic(
        tmp_path / "out", root=tmp_path / "src", images="img_*.nii.gz", labels="seg_*.nii.gz",
        unlabeled="extra/u_*.nii.gz", crop="otsu", crop_train_by_label=True, crop_margin=2,
        split=SplitOptions(labeled=2, test=1, seed=0))
    data = PreparedDataset(tmp_path / "out")
    assert len(summary.splits.test) == 1 and "u_9" in data.splits.unlabeled
    body = ((2, 18), (1, 17), (0, 16))  # the body box grown by 2, clipped at the volume
    training = [c for c in data.splits.labeled + data.splits.unlabeled if data.has_label(c)]
    assert len(training) == 4  # labeled and unlabeled cases with labels (folds may use both)
    for case in training:
        geometry = data.geometry(case)
        assert geometry.crop == ((3, 14), (2, 12), (1, 11))  # the label box grown by 2
        assert geometry.prepared.origin == pytest.approx((-6.0, -4.0, 2.0))  # LPS of RAS
    for case in [*data.splits.test, "u_9"]:
        assert data.geometry(case).crop == body, case
    assert not data.has_label("u_9")
    assert data.info.classes == {"0": "background", "1": "class 1", "2": "class 2"}
    plan = data.plan()
    assert plan.preprocess.crop == "otsu" and plan.preprocess.crop_train_by_label
    assert plan.labels.values == (0, 1, 2)
