"""`hco prepare` end to end: success, --force, and every kind of bad input."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.training.presets import Overrides, build_config, prepare_line
from hco_cli.training.setup import check_config

runner = CliRunner()
SHAPE = (16, 14, 12)


def _save(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _source(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 3:9, 2:8] = 1 + i % 2
        _save(root / f"c{i}" / "img.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        _save(root / f"c{i}" / "seg.nii.gz", label)
    return root


def _prepare(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    args = ["prepare", "generic", str(tmp_path / "src"), "--images", "*/img.nii.gz",
            "--labels", "*/seg.nii.gz", "--out", str(tmp_path / "data" / "ds"), *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def test_help_lists_the_four_sources() -> None:
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0
    for kind in ("la", "pancreas", "generic", "synthetic"):
        assert kind in result.stdout


def test_generic_success_table_and_force(tmp_path: Path) -> None:
    _source(tmp_path / "src")
    code, out, _ = _prepare(tmp_path, "--labeled", "2", "--spacing", "2")
    assert code == 0, out
    assert "labeled cases" in out and "class 2" in out and "2, 2, 2" in out
    info = json.loads((tmp_path / "data" / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert info["spacing"] == [2.0, 2.0, 2.0] and info["hco_version"]
    code, _, err = _prepare(tmp_path)
    assert code == 1 and "already exists; use --force" in err
    written = (tmp_path / "data" / "ds" / "dataset.json").read_text(encoding="utf-8")
    assert json.loads(written) == info
    code, _, _ = _prepare(tmp_path, "--force")
    assert code == 0
    info = json.loads((tmp_path / "data" / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert info["spacing"] == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ds"]


def _nan(root: Path) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[1, 2, 3] = np.nan
    _save(root / "c1" / "img.nii.gz", image)


def _shape(root: Path) -> None:
    _save(root / "c1" / "seg.nii.gz", np.zeros((16, 14, 11), np.uint8))


def _geometry(root: Path) -> None:
    label = np.asarray(nib.load(str(root / "c1" / "seg.nii.gz")).dataobj)
    _save(root / "c1" / "seg.nii.gz", label, (1.0, 1.0, 1.5))


def _float_label(root: Path) -> None:
    label = np.zeros(SHAPE, np.float32)
    label[2:5, 2:5, 2:5] = 0.5
    _save(root / "c1" / "seg.nii.gz", label)


def _negative(root: Path) -> None:
    label = np.zeros(SHAPE, np.int16)
    label[2:5, 2:5, 2:5] = -1
    _save(root / "c1" / "seg.nii.gz", label)


def _empty(root: Path) -> None:
    _save(root / "c1" / "seg.nii.gz", np.zeros(SHAPE, np.uint8))


def _missing(root: Path) -> None:
    (root / "c1" / "seg.nii.gz").unlink()


def _unreadable(root: Path) -> None:
    (root / "c1" / "img.nii.gz").write_bytes(b"not a nifti file")


@pytest.mark.parametrize(("damage", "message"), [
    (_nan, r"case c1: image .*c1/img.nii.gz has 1 NaN or Inf voxels"),
    (_shape, r"case c1: label .*c1/seg.nii.gz has shape \(16, 14, 11\) but image .*img.nii.gz"),
    (_geometry, r"case c1: label .*c1/seg.nii.gz has spacing \(1, 1, 1.5\) but image"),
    (_float_label, r"case c1: label .*c1/seg.nii.gz has non-integer values"),
    (_negative, r"case c1: label .*c1/seg.nii.gz has negative values"),
    (_empty, r"case c1: label .*c1/seg.nii.gz is empty"),
    (_missing, r"case c1: no label for image .*c1/img.nii.gz"),
    (_unreadable, r"case c1: cannot read .*c1/img.nii.gz"),
])
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(_source(tmp_path / "src"))
    code, _, err = _prepare(tmp_path, "--labeled", "3")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_duplicate_ids_and_unexpected_classes(tmp_path: Path) -> None:
    _source(tmp_path / "src")
    _save(tmp_path / "src" / "more" / "c1" / "img.nii.gz", np.zeros(SHAPE, np.float32))
    code, _, err = _prepare(tmp_path, "--unlabeled", "more/*/img.nii.gz")
    assert code == 1 and "case c1: duplicate case id" in err and "more/c1/img.nii.gz" in err
    code, _, err = _prepare(tmp_path, "--classes", "1=organ")
    assert code == 1 and "case c1: label" in err and "values [2] that are not classes" in err
    assert not (tmp_path / "data" / "ds").exists()


def test_empty_label_is_dropped_for_unlabeled_cases(tmp_path: Path) -> None:
    _empty(_source(tmp_path / "src", n=4))
    # With seed 3 the empty case c1 falls in the unlabeled split, where it is allowed.
    code, out, err = _prepare(tmp_path, "--labeled", "1", "--seed", "3")
    assert code == 0, err
    splits = json.loads((tmp_path / "data" / "ds" / "splits.json").read_text(encoding="utf-8"))
    assert "c1" in splits["unlabeled"]
    assert "empty labels dropped" in out
    assert not (tmp_path / "data" / "ds" / "cases" / "c1_label.npy").exists()


def test_la_missing_parts(la_unpacked: Path, tmp_path: Path) -> None:
    args = ["prepare", "la", str(la_unpacked), "--out", str(tmp_path / "la")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "use --allow-missing" in result.stderr
    assert not (tmp_path / "la").exists()
    result = runner.invoke(app, [*args, "--allow-missing", "--val", "1", "--workers", "2"])
    assert result.exit_code == 0, result.stderr
    assert "skipped (absent or unlisted)" in result.stdout and "80" in result.stdout


def test_synthetic_and_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    result = runner.invoke(app, ["prepare", "synthetic", "--out", str(out), "--shape",
                                 "24,24,20", "--unlabeled", "2", "--test", "1"])
    assert result.exit_code == 0, result.stderr
    assert (out / "cases" / "syn_000_label.npy").exists()
    assert not (out / "cases" / "syn_004_label.npy").exists()  # an unlabeled case
    result = runner.invoke(app, ["prepare", "synthetic", "--out", str(tmp_path / "x"),
                                 "--shape", "24,24"])
    assert result.exit_code == 1 and "--shape: expected 3 numbers" in result.stderr


def test_label_values_ignore_label_and_crop_options(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for i in range(3):
        label = np.full(SHAPE, 255, np.uint16)
        label[:2] = 0
        label[4:10, 3:9, 2:8] = 200
        label[6:8, 5:7, 4:6] = 600
        _save(root / f"c{i}" / "img.nii.gz", np.ones(SHAPE, np.float32))
        _save(root / f"c{i}" / "seg.nii.gz", label)
    code, out, err = _prepare(tmp_path, "--classes", "200=scar,600=cavity", "--ignore-label",
                              "255", "--crop-foreground")
    assert code == 0, err
    assert "scar (value 200)" in out and "cavity (value 600)" in out
    assert re.search(r"ignore label\s+\S\s+255", out)
    info = json.loads((tmp_path / "data" / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert info["label_values"] == [0, 200, 600] and info["ignore_label"] == 255
    plan = json.loads((tmp_path / "data" / "ds" / "plans.json").read_text(encoding="utf-8"))
    assert plan["preprocess"]["crop"] == "otsu"
    code, _, err = _prepare(tmp_path, "--crop-foreground", "--crop", "nonzero", "--force")
    assert code == 1 and "--crop-foreground is --crop otsu" in err
    code, _, err = _prepare(tmp_path, "--classes", "200=scar", "--ignore-label", "255",
                            "--force")
    assert code == 1 and re.search(r"values \[600\] that are not classes", err)


@pytest.mark.parametrize("config", ["fetal_cmt_adamw.yaml", "fetal_cmt_adamw_short.yaml"])
def test_sample_config_prepare_line_runs(fetal_source: Path, tmp_path: Path, config: str) -> None:
    """The `# Prepare:` line of a sample config, run as written on the real atlas, prepares a
    dataset that its config trains on (the fetal config's own line used to fail)."""
    path = Path(__file__).resolve().parents[2] / "sample_configs" / config
    line = prepare_line(path)
    assert line is not None and line.startswith("hco prepare ")
    out = tmp_path / "fetal"
    words = shlex.split(line.replace("<atlas>", str(fetal_source)))
    words[words.index("--out") + 1] = str(out)
    result = runner.invoke(app, [*words[1:], "--workers", "2"])
    assert result.exit_code == 0, result.output
    check_config(build_config(config_file=path, overrides=Overrides(data=out)))


@pytest.mark.parametrize(("options", "message"), [
    (["--norm", "ct", "--ct-window", "5,5"],
     r"--ct-window 5,5: the low bound must come first and be below the high one"),
    (["--norm", "ct", "--ct-window", "275,-125"],
     r"--ct-window 275,-125: the low bound must come first"),
    (["--norm", "ct", "--ct-window", "nan,1"],
     r"--ct-window: 'nan,1' holds a value that is not a finite number"),
    (["--spacing", "nan"], r"--spacing: 'nan' holds a value that is not a finite number"),
    (["--spacing", "1,inf,1"], r"--spacing: '1,inf,1' holds a value that is not a finite"),
    (["--spacing", "0"], r"--spacing: expected 3 numbers \(spacings > 0\), got '0'"),
    (["--crop-margin", "3"], r"--crop-margin 3 needs --crop \(or --crop-train-by-label\)"),
    (["--ct-window", "-100,200"],
     r"--ct-window applies to --norm ct only; this dataset is normalised with zscore"),
    (["--norm", "none", "--ct-window", "-100,200"],
     r"--ct-window applies to --norm ct only; this dataset is normalised with none"),
])
def test_unusable_or_unused_numbers_are_refused_in_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    _source(tmp_path / "src")
    code, _, err = _prepare(tmp_path, *options)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err and "dataset.json" not in err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_crop_margin_and_ct_window_where_they_are_used(tmp_path: Path) -> None:
    _source(tmp_path / "src")
    plan_path = tmp_path / "data" / "ds" / "plans.json"
    for options, margin in ((["--crop-margin", "0"], 0),
                            (["--crop-margin", "2", "--crop-train-by-label"], 2),
                            (["--crop-margin", "1", "--crop", "nonzero"], 1)):
        code, _, err = _prepare(tmp_path, *options, "--force")
        assert code == 0, err
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        assert plan["preprocess"]["crop_margin"] == margin
    code, _, err = _prepare(tmp_path, "--norm", "ct", "--ct-window", "-100,200", "--force")
    assert code == 0, err
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    assert plan["preprocess"]["ct_window"] == [-100.0, 200.0]
    image = np.load(tmp_path / "data" / "ds" / "cases" / "c0_image.npy")
    # N(0, 1) voxels in a -100..200 HU window: all within [0, 1], near 100/300
    assert image.min() > 0.0 and image.max() < 1.0
    assert abs(float(image.mean()) - 1 / 3) < 0.01


def test_an_nnunet_ct_folder_takes_a_ct_window_without_norm(tmp_path: Path) -> None:
    root = tmp_path / "Dataset002_Ct"
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for i in range(2):
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 3:9, 2:8] = 1
        _save(root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz", np.full(SHAPE, 50.0, np.float32))
        _save(root / "labelsTr" / f"ct_{i:03d}.nii.gz", label)
    result = runner.invoke(app, ["prepare", "generic", str(root), "--out", str(tmp_path / "ds"),
                                 "--ct-window", "0,100"])
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "ds" / "plans.json").read_text(encoding="utf-8"))
    assert plan["preprocess"]["norm"] == "ct" and plan["preprocess"]["ct_window"] == [0.0, 100.0]
    np.testing.assert_allclose(np.load(tmp_path / "ds" / "cases" / "ct_000_image.npy"), 0.5)


def test_summary_names_a_native_spacing_the_median_and_rounds_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, mm in enumerate((0.8, 1.2002, 1.2002)):
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 3:9, 2:8] = 1
        _save(tmp_path / "src" / f"c{i}" / "img.nii.gz",
              rng.normal(size=SHAPE).astype(np.float32), (mm, mm, mm))
        _save(tmp_path / "src" / f"c{i}" / "seg.nii.gz", label, (mm, mm, mm))
    code, out, err = _prepare(tmp_path)
    assert code == 0, err
    assert re.search(r"spacing \(mm, median\)\s+\S\s+1\.2, 1\.2, 1\.2\s", out), out
    info = json.loads((tmp_path / "data" / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert info["spacing"] == pytest.approx([1.2002] * 3, abs=1e-6)  # stored unrounded
    code, out, err = _prepare(tmp_path, "--spacing", "1.5", "--force")
    assert code == 0, err
    assert re.search(r"spacing \(mm\)\s+\S\s+1\.5, 1\.5, 1\.5\s", out), out


def test_test_cases_without_labels_are_named_in_the_summary(tmp_path: Path) -> None:
    """An nnU-Net folder with imagesTs but no labelsTs: its test cases are prepared without
    labels, and the summary says they will be predicted but not scored."""
    root = tmp_path / "Dataset003_Bare"
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    rng = np.random.default_rng(1)
    for i in range(3):
        folder = "imagesTr" if i < 2 else "imagesTs"
        _save(root / folder / f"mr_{i:03d}_0000.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        if i < 2:
            label = np.zeros(SHAPE, np.uint8)
            label[4:10, 3:9, 2:8] = 1
            _save(root / "labelsTr" / f"mr_{i:03d}.nii.gz", label)
    result = runner.invoke(app, ["prepare", "generic", str(root), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert re.search(r"test cases\s+│\s+1 \(1 without a label: predicted, not scored\)",
                     result.stdout), result.stdout
    assert re.search(r"labeled cases\s+│\s+2\s+│", result.stdout), result.stdout
