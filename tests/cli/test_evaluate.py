"""``hco evaluate`` end to end on NIfTI files, outputs and error paths."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.dataset import Geometry
from hco_cli.data.io import write_volume
from hco_cli.evaluation.metrics import METRICS, evaluate_pair

runner = CliRunner()
SPACING = (0.5, 0.5, 2.0)


def cube_case(shift: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((20, 18, 10), np.uint8)
    gt[4:12, 5:13, 2:8] = 1
    gt[13:18, 2:7, 3:9] = 2
    return np.roll(gt, shift, axis=0), gt


@pytest.fixture()
def dirs(tmp_path: Path) -> Path:
    for i, shift in enumerate((0, 1, 2)):
        pred, gt = cube_case(shift)
        geometry = Geometry(shape=gt.shape, spacing=SPACING, origin=(10.0, -4.0, 3.0))
        write_volume(tmp_path / "pred" / f"c{i}.nii.gz", pred, geometry)
        write_volume(tmp_path / "labels" / f"c{i}.nii.gz", gt, geometry)
    return tmp_path


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_table_json_and_csv(dirs: Path) -> None:
    out_json, out_csv = dirs / "out" / "summary.json", dirs / "out" / "cases.csv"
    result = runner.invoke(app, ["evaluate", str(dirs / "pred"), str(dirs / "labels"),
                                 "--json", str(out_json), "--csv", str(out_csv), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    for header in ("Dice %", "Jaccard %", "ASD", "HD95", "excl."):
        assert header in result.stdout
    assert "voxels" in result.stdout
    data = json.loads(out_json.read_text(encoding="utf-8"))
    for key in ("metric_per_case", "mean", "std", "spacing_unit"):
        assert key in data
    assert data["spacing_unit"] == "voxel"
    assert [entry["case"] for entry in data["metric_per_case"]] == ["c0", "c1", "c2"]
    per_case = {e["case"]: e["metrics"] for e in data["metric_per_case"]}
    for i, shift in enumerate((0, 1, 2)):
        entry = per_case[f"c{i}"]
        assert set(entry) == {"1", "2"}
        want = evaluate_pair(*cube_case(shift), classes=[1, 2])
        for c in ("1", "2"):
            assert set(entry[c]) == set(METRICS)
            for m in METRICS:
                assert entry[c][m] == pytest.approx(want[c][m])
            assert 0.0 <= entry[c]["dice"] <= 1.0
    for stat, fn in (("mean", np.mean), ("std", np.std)):
        assert set(data[stat]) == {"1", "2"}
        for c in ("1", "2"):
            assert set(data[stat][c]) == set(METRICS)
            for m in METRICS:
                expected = fn([per_case[f"c{i}"][c][m] for i in range(3)])
                assert data[stat][c][m] == pytest.approx(expected)
    assert data["mean"]["1"]["dice"] == pytest.approx((1 + 7 / 8 + 6 / 8) / 3)
    rows = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert len(rows) == 6 and set(rows[0]) == {"case", "class", *METRICS}
    assert float(rows[2]["dice"]) == pytest.approx(per_case["c1"]["1"]["dice"])


def test_mm_scales_distances_by_label_spacing(dirs: Path) -> None:
    out_vox, out_mm = dirs / "vox.json", dirs / "mm.json"
    args = ["evaluate", str(dirs / "pred"), str(dirs / "labels"), "--jobs", "1"]
    assert runner.invoke(app, [*args, "--json", str(out_vox)]).exit_code == 0
    result = runner.invoke(app, [*args, "--mm", "--json", str(out_mm)])
    assert result.exit_code == 0, result.output
    assert "in mm" in result.stdout
    vox = json.loads(out_vox.read_text(encoding="utf-8"))
    mm = json.loads(out_mm.read_text(encoding="utf-8"))
    assert mm["spacing_unit"] == "mm"
    # The cubes move along x only, where the spacing is 0.5 mm.
    assert mm["metric_per_case"][2]["metrics"]["1"]["hd95"] == pytest.approx(1.0)
    assert vox["metric_per_case"][2]["metrics"]["1"]["hd95"] == pytest.approx(2.0)


def test_empty_prediction_policies(dirs: Path) -> None:
    pred, _ = cube_case(0)
    pred[pred == 2] = 0
    write_volume(dirs / "pred" / "c0.nii.gz", pred, Geometry(shape=pred.shape, spacing=SPACING,
                                                            origin=(10.0, -4.0, 3.0)))
    out = dirs / "s.json"
    args = ["evaluate", str(dirs / "pred"), str(dirs / "labels"), "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["metric_per_case"][0]["metrics"]["2"]["hd95"] is None
    assert data["n_excluded"]["2"]["hd95"] == 1
    assert data["mean"]["2"]["dice"] == pytest.approx((0 + 4 / 5 + 3 / 5) / 3)  # 0 is counted
    assert "0/1" in result.stdout
    assert runner.invoke(app, [*args, "--empty", "bcp"]).exit_code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["metric_per_case"][0]["metrics"]["2"] == dict.fromkeys(METRICS, 0.0)
    assert data["empty_policy"] == "bcp" and not math.isnan(data["mean"]["2"]["hd95"])


def test_classes_and_allow_missing(dirs: Path) -> None:
    (dirs / "labels" / "c2.nii.gz").unlink()
    args = ["evaluate", str(dirs / "pred"), str(dirs / "labels")]
    line = one_error_line(runner.invoke(app, args))
    assert "no label for 1 prediction(s): c2" in line and "--allow-missing" in line
    out = dirs / "s.json"
    result = runner.invoke(app, [*args, "--allow-missing", "--classes", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "dropped 1 unpaired case(s)" in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data["metric_per_case"]) == 2 and set(data["mean"]) == {"2"}


@pytest.mark.parametrize("case", ["shape", "geometry", "float", "empty", "classes", "corrupt"])
def test_error_paths_give_one_line(dirs: Path, case: str) -> None:
    pred, _ = cube_case(0)
    target = dirs / "pred" / "c1.nii.gz"
    pred_dir, extra = dirs / "pred", []
    if case == "shape":
        write_volume(target, pred[:, :-2], Geometry(shape=pred[:, :-2].shape, spacing=SPACING))
        expected = "case c1: prediction shape"
    elif case == "geometry":
        write_volume(target, pred, Geometry(shape=pred.shape, spacing=SPACING))
        expected = "case c1: prediction origin"
    elif case == "float":
        write_volume(target, pred * 0.5, Geometry(shape=pred.shape, spacing=SPACING))
        expected = "non-integer labels"
    elif case == "empty":
        pred_dir = dirs / "nothing"
        pred_dir.mkdir()
        expected = "no prediction volumes"
    elif case == "classes":
        extra, expected = ["--classes", "one"], "comma-separated integers"
    else:
        target.write_bytes(b"\x00" * 10)
        expected = "cannot read"
    result = runner.invoke(app, ["evaluate", str(pred_dir), str(dirs / "labels"), *extra])
    assert expected in one_error_line(result)


def test_mm_with_h5_labels_is_an_error(tmp_path: Path) -> None:
    import h5py

    pred, gt = cube_case(0)
    (tmp_path / "la" / "K1").mkdir(parents=True)
    with h5py.File(tmp_path / "la" / "K1" / "mri_norm2.h5", "w") as handle:
        handle["label"] = gt
    write_volume(tmp_path / "pred" / "K1.nii.gz", pred, Geometry(shape=pred.shape, spacing=SPACING))
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "la")]
    assert runner.invoke(app, args).exit_code == 0
    assert "h5 labels store none" in one_error_line(runner.invoke(app, [*args, "--mm"]))


def test_help_documents_the_policies() -> None:
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    options = ("--mm", "--empty", "bcp", "--allow-missing", "--classes", "--jobs", "--csv")
    for text in (*options, "dataset.json"):
        assert text in result.stdout


def test_a_pattern_of_nested_label_files_reads_as_the_flat_folder(dirs: Path) -> None:
    """Labels in the layout of many public sets (<CASE>/seg.nii.gz): a quoted pattern gives
    the case ids that hco prepare generic --labels gives (the folders' names), the same
    numbers as the flat folder, labels without a prediction skipped; a pattern that matches
    nothing, or matches what is no label volume, is one line."""
    for i in range(3):
        target = dirs / "atlas" / f"c{i}" / "seg.nii.gz"
        target.parent.mkdir(parents=True)
        (dirs / "labels" / f"c{i}.nii.gz").rename(target)
    (dirs / "pred" / "c2.nii.gz").unlink()  # a pool: c2's label has no prediction
    flat = dirs / "flat"
    flat.mkdir()
    for i in range(2):
        (flat / f"c{i}.nii.gz").write_bytes((dirs / "atlas" / f"c{i}" / "seg.nii.gz").read_bytes())
    outs = {}
    for name, labels in (("pattern", f"{dirs}/atlas/*/seg.nii.gz"), ("flat", str(flat))):
        out = dirs / f"{name}.json"
        result = runner.invoke(app, ["evaluate", str(dirs / "pred"), labels, "--json", str(out)])
        assert result.exit_code == 0, result.output
        outs[name] = json.loads(out.read_text(encoding="utf-8"))
    assert [c["case"] for c in outs["pattern"]["metric_per_case"]] == ["c0", "c1"]
    assert outs["pattern"]["metric_per_case"] == outs["flat"]["metric_per_case"]
    line = one_error_line(runner.invoke(app, ["evaluate", str(dirs / "pred"),
                                              f"{dirs}/atlas/*/none.nii.gz"]))
    assert line == f"error: labels '{dirs}/atlas/*/none.nii.gz' matches no file"
    (dirs / "atlas" / "c0" / "notes.txt").write_text("x", encoding="utf-8")
    line = one_error_line(runner.invoke(app, ["evaluate", str(dirs / "pred"),
                                              f"{dirs}/atlas/*/*"]))
    assert "which is not a label volume" in line
