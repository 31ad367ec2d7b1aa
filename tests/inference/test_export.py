"""``hco export``: ONNX and TorchScript files that reproduce PyTorch's logits, their contract,
and the refusal of an export that does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from hco_cli.errors import ConfigError, MissingExtraError
from hco_cli.inference import export as export_module
from hco_cli.inference.export import ExportCheckError, ExportOptions, export_run
from tests.inference.tiny_run import PATCH, tiny_dataset, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("export")
    return tiny_run(root, tiny_dataset(root, classes=2), classes=3, which=("best",))


def _batch(n: int) -> torch.Tensor:
    return torch.randn((n, 1, *PATCH), generator=torch.Generator().manual_seed(7))


def test_onnx_export_matches_pytorch_and_takes_any_batch(
    run: tuple[Path, torch.nn.Module], tmp_path: Path,
) -> None:
    folder, model = run
    report = export_run(folder, ExportOptions(format="onnx", out=tmp_path / "model.onnx"))
    assert report.max_abs_diff <= 1e-4 and report.input_shape == (2, 1, *PATCH)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    batch = _batch(3)  # not the batch of the check
    got = session.run(["logits"], {"image": batch.numpy()})[0]
    with torch.no_grad():
        want = model(batch).numpy()
    assert got.shape == (3, 3, *PATCH)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    contract = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    assert contract["model"] == "model.onnx" and contract["format"] == "onnx"
    assert contract["input"]["shape"] == ["N", 1, *PATCH] and contract["input"]["channels"] == 1
    assert contract["output"]["label_values"] == [0, 1, 2]
    assert contract["normalization"]["scheme"] == "zscore" and contract["spacing_mm"] is None
    assert contract["spacing_median_mm"] == [1.0, 1.0, 1.0]
    assert contract["sliding_window"]["stride"] == [8, 8, 8]
    assert contract["check"]["max_abs_diff"] == report.max_abs_diff
    assert contract["plan"]["patch_size"] == list(PATCH)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_matches_pytorch(run: tuple[Path, torch.nn.Module],
                                            tmp_path: Path) -> None:
    folder, model = run
    report = export_run(folder, ExportOptions(format="torchscript", out=tmp_path / "net.pt"))
    assert report.max_abs_diff <= 1e-4 and report.contract == tmp_path / "net.json"
    scripted = torch.jit.load(str(tmp_path / "net.pt"))
    batch = _batch(1)
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch), model(batch), rtol=0, atol=1e-5)


def test_an_export_above_the_tolerance_is_refused_and_not_written(
    run: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, _ = run
    real = export_module._run_torchscript
    monkeypatch.setattr(export_module, "_run_torchscript",
                        lambda path, batch: real(path, batch) + 2e-3)
    with pytest.raises(ExportCheckError, match=r"differs from PyTorch by 0.002 .*tolerance "
                                               r"0.001\); nothing written"):
        export_run(folder, ExportOptions(format="torchscript", out=tmp_path / "net.pt",
                                         tolerance=1e-3))
    assert list(tmp_path.iterdir()) == []


def test_existing_files_need_force(run: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = run
    (tmp_path / "net.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"net.json already exists; use --force"):
        export_run(folder, ExportOptions(format="torchscript", out=tmp_path / "net.pt"))
    export_run(folder, ExportOptions(format="torchscript", out=tmp_path / "net.pt", force=True))
    assert json.loads((tmp_path / "net.json").read_text(encoding="utf-8"))["model"] == "net.pt"


def test_a_missing_extra_names_it() -> None:
    with pytest.raises(MissingExtraError, match=r"needs no_such_module_x: pip install "
                                                r"'hco-cli\[onnx\]'"):
        export_module._require("onnx", "no_such_module_x")
