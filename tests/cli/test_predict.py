"""``hco predict`` through the real app: success output and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.cli.predict import parse_stride
from hco_cli.errors import ConfigError
from tests.inference.tiny_run import tiny_dataset, tiny_run

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-predict")
    dataset = tiny_dataset(root)
    run, _ = tiny_run(root, dataset, which=("best",))
    return dataset, run


def _error(args: list[str]) -> str:
    result = runner.invoke(app, ["predict", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_predict_and_evaluate_print_a_summary(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny
    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    result = runner.invoke(app, ["predict", str(run_copy), "--device", "cpu", "--stride", "8,4",
                                 "--lcc", "--evaluate", "--no-amp"])
    assert result.exit_code == 0, result.output
    assert "2 cases" in result.stdout and "syn_002" in result.stdout
    assert "16x16x16" in result.stdout and "stride 8/8/4" in result.stdout
    assert "mean Dice" in result.stdout
    preds = run_copy / "eval" / "best" / "preds"
    assert sorted(p.name for p in preds.iterdir()) == [".hco.json", "syn_002.nii.gz",
                                                       "syn_003.nii.gz"]
    summary = json.loads((run_copy / "eval" / "best" / "summary.json").read_text(encoding="utf-8"))
    assert summary["lcc"] is True and summary["stride"] == [8, 8, 4]
    again = runner.invoke(app, ["predict", str(run_copy), "--device", "cpu"])
    assert again.exit_code == 1 and "use --force" in again.stderr


def test_missing_run(tmp_path: Path) -> None:
    assert "does not exist" in _error([str(tmp_path / "nope")])


def test_run_without_config(tmp_path: Path) -> None:
    assert "is not a run folder (no config.yaml)" in _error([str(tmp_path)])


def test_missing_checkpoint(tiny: tuple[Path, Path]) -> None:
    _, run = tiny
    assert "has no checkpoints/last.pt" in _error([str(run), "--checkpoint", "last"])


def test_checkpoint_option_on_a_file(tiny: tuple[Path, Path]) -> None:
    _, run = tiny
    line = _error([str(run / "checkpoints" / "best.pt"), "--checkpoint", "best"])
    assert "applies to run folders" in line


def test_missing_dataset(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny
    line = _error([str(run), "--data", str(tmp_path / "gone")])
    assert "prepared dataset" in line and "not found" in line


def test_empty_split(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny
    line = _error([str(run), "--split", "val", "--out", str(tmp_path / "o")])
    assert "split 'val'" in line and "is empty" in line


def test_unknown_fold(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny
    line = _error([str(run), "--split", "labeled", "--fold", "L3U0", "--out", str(tmp_path)])
    assert "fold L3U0 does not exist" in line


def test_unsupported_image_format(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"\x89PNG")
    line = _error([str(run), "--images", str(scan), "--out", str(tmp_path / "o")])
    assert "unsupported file format" in line and "scan.png" in line


def test_images_with_split_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tiny
    line = _error([str(run), "--images", str(tmp_path), "--split", "test"])
    assert "--split applies to prepared datasets" in line


def test_bad_stride(tiny: tuple[Path, Path]) -> None:
    _, run = tiny
    assert "--stride" in _error([str(run), "--stride", "8,x"])
    # longer than the 16-voxel patch: holes between windows, refused before any output
    assert _error([str(run), "--stride", "8,8,17"]) == (
        "error: --stride 8,8,17 is longer than the patch 16,16,16 on axis z: the voxels "
        "between two windows would get no prediction")
    assert not (run / "eval").exists() or not any((run / "eval").rglob("*.nii.gz"))


def test_parse_stride_forms() -> None:
    assert parse_stride("18,4") == (18, 18, 4)
    assert parse_stride("5") == (5, 5, 5)
    assert parse_stride("1,2,3") == (1, 2, 3)
    with pytest.raises(ConfigError):
        parse_stride("0,4")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-ensemble")
    dataset = tiny_dataset(root)
    for name, seed in (("s1", 1), ("s2", 2)):
        tiny_run(root / "runs", dataset, seed=seed, name=name, which=("best",))
    return dataset, root / "runs"


def test_ensemble_with_tta_probabilities_and_uncertainty(pair: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    _, runs = pair
    out = tmp_path / "ens" / "preds"
    result = runner.invoke(app, ["predict", str(runs / "*"), "--device", "cpu", "--tta",
                                 "--save-probabilities", "--uncertainty", "--evaluate",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 run(s) x 8 mirrored copies: 16 forward passes per window (16x" in (
        result.stdout)
    assert "also written: CASE.npz probabilities, uncertainty/CASE.nii.gz entropy" in (
        result.stdout)
    assert sorted(p.name for p in out.iterdir()) == [  # with hco's marker of the folder kind
        ".hco.json", "syn_002.nii.gz", "syn_002.npz", "syn_003.nii.gz", "syn_003.npz",
        "uncertainty"]
    assert sorted(p.name for p in (out / "uncertainty").iterdir()) == [
        "syn_002.nii.gz", "syn_003.nii.gz"]
    summary = json.loads((out.parent / "summary.json").read_text(encoding="utf-8"))
    assert summary["runs"] == [str(runs / "s1"), str(runs / "s2")]
    assert summary["tta_axes"] == [0, 1, 2]
    timing = summary["prediction_per_case"]["syn_002"]
    assert timing["stitched_on"] == "cpu" and timing["peak_gpu_mib"] is None
    assert timing["seconds"] > 0
    again = runner.invoke(app, ["evaluate", str(out), str(pair[0])])
    assert again.exit_code == 0, again.output  # the extra outputs do not disturb evaluate


def test_ensemble_needs_out(pair: tuple[Path, Path]) -> None:
    _, runs = pair
    line = _error([str(runs / "s1"), str(runs / "s2"), "--device", "cpu"])
    assert "2 runs form an ensemble: choose where to write it with --out" in line


def test_ensemble_of_different_patches(pair: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, runs = pair
    other, _ = tiny_run(tmp_path, dataset, name="big", patch=(32, 32, 16), which=("best",))
    line = _error([str(runs / "s1"), str(other), "--out", str(tmp_path / "o")])
    assert "runs disagree on the patch" in line and "16x16x16 and 32x32x16" in line


def test_glob_matching_no_run(tmp_path: Path) -> None:
    assert "matches no run folder" in _error([str(tmp_path / "nothing-*")])


def test_gpu_stitching_on_the_cpu(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, runs = pair
    line = _error([str(runs / "s1"), "--device", "cpu", "--stitch", "gpu"])
    assert "--stitch gpu needs a CUDA device" in line


def test_a_dataset_prepared_with_another_plan_is_refused(tiny: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """--data naming a dataset prepared otherwise (here resampled to 2 mm where the run's was
    kept at native spacing) is refused before anything is written; the same dataset copied
    elsewhere, its statistics aside, still predicts."""
    dataset, run = tiny
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    plan = json.loads((other / "plans.json").read_text(encoding="utf-8"))
    plan["spacing_median"] = [3.0, 3.0, 3.0]  # another dataset's statistics: not refused
    (other / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    out = tmp_path / "preds"
    result = runner.invoke(app, ["predict", str(run), "--data", str(other), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    plan["preprocess"]["spacing"] = [2.0, 2.0, 2.0]
    (other / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    line = _error([str(run), "--data", str(other), "--out", str(tmp_path / "p2")])
    assert line == (f"error: dataset {other} was prepared with another plan than run {run} "
                    "trained on (plans.json differ in spacing (None vs [2.0, 2.0, 2.0])); "
                    "predict its scans with --images, which applies the run's plan")
    assert not (tmp_path / "p2").exists()
