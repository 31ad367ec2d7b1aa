"""nnU-Net export through the real app: ``hco prepare KIND --export-nnunet`` and
``hco prepare export-nnunet``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from hco_cli.cli.app import app

runner = CliRunner()


def test_prepare_with_export_nnunet(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "synthetic", "--out", str(tmp_path / "ds"),
                                 "--labeled", "2", "--unlabeled", "1", "--val", "1", "--test",
                                 "1", "--shape", "16,16,16", "--export-nnunet",
                                 str(tmp_path / "Dataset502_Syn")])
    assert result.exit_code == 0, result.output
    assert "2 training + 1 validation cases (val split) in imagesTr, 1 in imagesTs" in (
        " ".join(result.stdout.split()))
    fold = json.loads((tmp_path / "Dataset502_Syn" / "splits_final.json").read_text("utf-8"))
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text("utf-8"))
    assert fold == [{"train": splits["labeled"], "val": splits["val"]}]
    again = runner.invoke(app, ["prepare", "export-nnunet", str(tmp_path / "ds"), "--out",
                                str(tmp_path / "Dataset502_Syn")])
    assert again.exit_code == 1 and "use --force" in again.stderr
    assert len([line for line in again.stderr.splitlines() if line.strip()]) == 1
    forced = runner.invoke(app, ["prepare", "export-nnunet", str(tmp_path / "ds"), "--out",
                                 str(tmp_path / "Dataset502_Syn"), "--force"])
    assert forced.exit_code == 0, forced.output


def test_export_nnunet_of_a_missing_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "export-nnunet", str(tmp_path / "gone"), "--out",
                                 str(tmp_path / "nn")])
    assert result.exit_code == 1 and "is not a prepared dataset" in result.stderr
    assert "Traceback" not in result.output
