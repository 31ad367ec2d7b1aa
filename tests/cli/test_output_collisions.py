"""Output options that name the same file, or one of the command's inputs, fail at once.

Regression tests of the reports: ``hco evaluate --csv s.out --json s.out`` kept only the JSON,
``hco compare --json same.out --csv same.out --markdown same.out`` "wrote" it three times, and
``hco compare B.json A.json --json A.json`` replaced the input summary A.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.data.dataset import Geometry
from hco_cli.data.io import write_volume
from hco_cli.errors import OutputError
from tests.cli.test_compare import _error_line
from tests.evaluation.compare_fixtures import cases, one_class, write_run, write_summary

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    gt = np.zeros((12, 12, 6), np.uint8)
    gt[3:9, 3:9, 1:5] = 1
    geometry = Geometry(shape=gt.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    for i, shift in enumerate((0, 1)):
        write_volume(tmp_path / "pred" / f"c{i}.nii.gz", np.roll(gt, shift, axis=0), geometry)
        write_volume(tmp_path / "labels" / f"c{i}.nii.gz", gt, geometry)
    return tmp_path


@pytest.fixture
def summaries(tmp_path: Path) -> list[Path]:
    a = write_summary(tmp_path / "A.json", cases(4), one_class([0.8, 0.7, 0.9, 0.6]))
    b = write_summary(tmp_path / "B.json", cases(4), one_class([0.82, 0.75, 0.91, 0.66]))
    return [b, a]


def test_evaluate_refuses_csv_and_json_in_one_file(folders: Path) -> None:
    out = folders / "s.out"
    line = _error_line(runner.invoke(app, ["evaluate", str(folders / "pred"),
                                           str(folders / "labels"), "--csv", str(out),
                                           "--json", str(out)]))
    assert "--csv and --json both name" in line and "s.out" in line
    assert not out.exists()  # refused before anything was evaluated or written


@pytest.mark.parametrize("which", ["pred", "labels"])
def test_evaluate_refuses_to_write_over_an_input_volume(folders: Path, which: str) -> None:
    victim = folders / which / "c1.nii.gz"
    before = victim.read_bytes()
    line = _error_line(runner.invoke(app, ["evaluate", str(folders / "pred"),
                                           str(folders / "labels"), "--json", str(victim)]))
    assert "--json" in line and "is an input of this command" in line
    assert victim.read_bytes() == before


def test_evaluate_still_writes_distinct_outputs_beside_its_inputs(folders: Path) -> None:
    """A summary inside the prediction folder is no input (only volumes are read), so a
    second run may replace it."""
    args = ["evaluate", str(folders / "pred"), str(folders / "labels"),
            "--json", str(folders / "pred" / "summary.json"), "--csv", str(folders / "c.csv")]
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert (folders / "pred" / "summary.json").is_file() and (folders / "c.csv").is_file()


def test_compare_refuses_one_file_for_several_outputs(summaries: list[Path],
                                                      tmp_path: Path) -> None:
    same = tmp_path / "same.out"
    line = _error_line(runner.invoke(app, ["compare", *map(str, summaries), "--json", str(same),
                                           "--csv", str(same), "--markdown", str(same)],
                                     env=WIDE))
    assert "--json and --csv both name" in line
    assert not same.exists() and "wrote" not in line


def test_compare_refuses_plot_over_markdown(summaries: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("statsmodels")
    same = tmp_path / "same.png"
    line = _error_line(runner.invoke(app, ["compare", *map(str, summaries),
                                           "--markdown", str(same), "--plot", str(same)],
                                     env=WIDE))
    assert "--markdown and --plot both name" in line and not same.exists()


def test_compare_refuses_to_overwrite_an_input_summary(summaries: list[Path],
                                                       tmp_path: Path) -> None:
    b, a = summaries
    before = a.read_bytes()
    line = _error_line(runner.invoke(app, ["compare", str(b), str(a), "--json", str(a)],
                                     env=WIDE))
    assert "--json" in line and "is an input of this command" in line
    assert a.read_bytes() == before


def test_compare_refuses_a_run_folders_summary_and_a_glob_member(tmp_path: Path) -> None:
    """Members of run folders and globs count: their summary.json is read."""
    for seed in (0, 1):
        write_run(tmp_path, f"sgd-s{seed}", seed=seed,
                  evals={"best": (cases(4), one_class([0.8, 0.7, 0.9, 0.6]))})
        write_run(tmp_path, f"hco-s{seed}", seed=seed, optimizer="sgd-hco",
                  evals={"best": (cases(4), one_class([0.82, 0.75, 0.91, 0.66]))})
    before = _files(tmp_path)
    victim = tmp_path / "hco-s1" / "eval" / "best" / "summary.json"
    arms = [f"sgd={tmp_path}/sgd-s*", f"hco={tmp_path}/hco-s*"]
    line = _error_line(runner.invoke(app, ["compare", *arms, "--csv", str(victim)], env=WIDE))
    assert "--csv" in line and "is an input of this command" in line
    line = _error_line(runner.invoke(app, ["compare", *arms, "--markdown",
                                           str(tmp_path / "sgd-s0" / "run.json")], env=WIDE))
    assert "is an input of this command" in line
    assert _files(tmp_path) == before


def test_compare_with_distinct_outputs_still_writes_them(summaries: list[Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", *map(str, summaries), "--json", str(out / "c.json"),
                                 "--csv", str(out / "c.csv"), "--markdown", str(out / "c.md")],
                           env=WIDE)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["c.csv", "c.json", "c.md"]


def test_helper_follows_links_and_relative_paths(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hco_cli.outputs import check_distinct_outputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    real = tmp_path / "in.json"
    real.write_text("{}", encoding="utf-8")
    os.symlink(real, tmp_path / "link.json")
    os.link(real, tmp_path / "hard.json")
    for name in ("link.json", "hard.json", "sub/../in.json"):
        with pytest.raises(OutputError, match="is an input"):
            check_distinct_outputs({"--json": Path(name)}, [real])
    with pytest.raises(OutputError, match="--a and --b both name"):
        check_distinct_outputs({"--a": Path("x.out"), "--c": None, "--b": tmp_path / "x.out"})
    check_distinct_outputs({"--a": Path("x.out"), "--b": Path("y.out"), "--c": None}, [real])
