"""Generic folders: glob case ids, the fetal atlas (real NIfTI), nnU-Net/MSD folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.data.sources.generic import match_cases, parse_classes, pattern_regex
from hco_cli.errors import ConfigError, DataError

FETAL_IMAGES = "*GA2[12]_*/srr.nii.gz"
FETAL_LABELS = "*GA2[12]_*/parcellation.nii.gz"


@pytest.mark.parametrize(("pattern", "path", "case"), [
    ("dir/*/srr.nii.gz", "dir/fetal_GA21/srr.nii.gz", "fetal_GA21"),
    ("imagesTr/*_0000.nii.gz", "imagesTr/case_001_0000.nii.gz", "case_001"),
    ("img_*.nii.gz", "img_017.nii.gz", "017"),
    ("a/GA2[12]_*/x.nrrd", "a/GA21_op/x.nrrd", "1_op"),
    ("P_*/*/*", "P_0001/study/series", "0001"),
    ("labels/*", "labels/case_9.nii.gz", "case_9.nii.gz"),
])
def test_case_id_is_the_text_of_the_first_wildcard_component(
    pattern: str, path: str, case: str
) -> None:
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


def test_crop_unlabeled_and_test_selection(tmp_path: Path) -> None:
    for i in range(5):
        image, label = _blob_case(i)
        _nifti(tmp_path / "src" / f"img_{i}.nii.gz", image, (2.0, 2.0, 2.0))
        _nifti(tmp_path / "src" / f"seg_{i}.nii.gz", label, (2.0, 2.0, 2.0))
    image, _ = _blob_case(9)
    image[:2] = 0.0
    _nifti(tmp_path / "src" / "extra" / "u_9.nii.gz", image, (2.0, 2.0, 2.0))
    summary = prepare_generic(
        tmp_path / "out", root=tmp_path / "src", images="img_*.nii.gz", labels="seg_*.nii.gz",
        unlabeled="extra/u_*.nii.gz", crop_foreground=True, crop_margin=2,
        split=SplitOptions(labeled=2, test=1, seed=0))
    data = PreparedDataset(tmp_path / "out")
    assert len(summary.splits.test) == 1 and "9" in data.splits.unlabeled
    geometry = data.geometry("0")
    assert geometry.crop == ((3, 14), (2, 12), (1, 11))
    assert geometry.prepared.origin == pytest.approx((-6.0, -4.0, 2.0))  # LPS of RAS (6, 4, 2)
    assert not data.has_label("9")
    assert data.geometry("9").crop == ((0, 20), (0, 18), (0, 16))
    assert data.info.classes == {"0": "background", "1": "class 1", "2": "class 2"}
