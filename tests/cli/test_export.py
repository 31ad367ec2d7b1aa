"""``hco export`` through the real app: the check's line and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hco_cli.cli.app import app
from tests.inference.tiny_run import tiny_dataset, tiny_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-export")
    return tiny_run(root, tiny_dataset(root), which=("best",))[0]


def _error(args: list[str]) -> str:
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_torchscript_export_prints_the_check(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", str(run), "--format", "torchscript", "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote{out}(torchscript)" in "".join(result.stdout.split())
    assert "checked on a random 2x1x16x16x16 batch: max abs diff" in result.stdout
    assert out.is_file() and (tmp_path / "model.json").is_file()
    line = _error([str(run), "--format", "torchscript", "--out", str(out)])
    assert "already exists; use --force" in line


def test_bad_tolerance(run: Path, tmp_path: Path) -> None:
    line = _error([str(run), "--out", str(tmp_path / "m.onnx"), "--tolerance", "0"])
    assert "tolerance" in line and "greater than 0" in line


def test_missing_run(tmp_path: Path) -> None:
    assert "does not exist" in _error([str(tmp_path / "nope"), "--out", str(tmp_path / "m.pt")])


def test_json_out_is_the_contract_name(run: Path, tmp_path: Path) -> None:
    assert "the .json name is the contract's" in _error(
        [str(run), "--out", str(tmp_path / "m.json")])
