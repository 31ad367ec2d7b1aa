"""Whole-volume prediction: labels, post-processing, original geometry, runs end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import hco_cli.inference.predict as predict_module
from hco_cli.config import validate_config
from hco_cli.data.dataset import CaseGeometry, Geometry, PreparedDataset
from hco_cli.data.io import read_volume, write_volume
from hco_cli.data.labels import build_label_map
from hco_cli.data.prepare import SplitOptions, prepare_generic, prepare_synthetic
from hco_cli.errors import ConfigError, DataError, OutputError
from hco_cli.evaluation.references import LabelSource
from hco_cli.evaluation.saved_results import read_summary
from hco_cli.inference.inputs import InputCase, LoadedCase, dataset_cases, group_images
from hco_cli.inference.predict import (
    PredictOptions,
    Window,
    label_dtype,
    labels_from_probabilities,
    predict,
    predict_cases,
)
from hco_cli.inference.runs import load_runs
from hco_cli.training.entry import train
from tests.inference.tiny_run import PATCH, tiny_config, tiny_dataset, tiny_run

# A reference only; the GPU image has no SimpleITK, so there this module is skipped.
sitk = pytest.importorskip("SimpleITK")

CPU = torch.device("cpu")
BINARY = build_label_map([0, 1])


class Threshold(nn.Module):
    """Logits (0, x): foreground probability > 0.5 exactly where the image is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def test_two_classes_threshold_foreground_above_half() -> None:
    fg = torch.tensor([0.2, 0.5, 0.5001, 0.9]).reshape(4, 1, 1)
    probs = torch.stack([1 - fg, fg])
    assert labels_from_probabilities(probs).flatten().tolist() == [0, 0, 1, 1]


def test_more_classes_take_the_argmax() -> None:
    probs = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.3, 0.2], [0.2, 0.6, 0.6]]).reshape(3, 3, 1, 1)
    assert labels_from_probabilities(probs).flatten().tolist() == [0, 2, 2]


def test_label_dtype_widens_above_255() -> None:
    assert label_dtype(2) is np.uint8 and label_dtype(256) is np.uint8
    assert label_dtype(257) is np.uint16


def _oblique_affine() -> np.ndarray:
    """RAS affine: rotated 25 degrees about z, y flipped, 0.5/0.5/1.5 mm, non-zero origin."""
    c, s = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([0.5, 0.5, 1.5])[None, :]
    affine[:3, 3] = (12.3, -40.5, 7.25)
    return affine


def _raw_case(folder: Path, name: str) -> np.ndarray:
    """An oblique NIfTI scan with a labeled box and a bright unlabeled spot far from it;
    returns what a threshold at 0 segments (the box and the spot)."""
    shape = (40, 36, 20)
    label = np.zeros(shape, np.uint8)
    # Odd bounds on the x/y axes that are resampled by 2: nearest neighbour maps them back exactly.
    label[11:25, 9:21, 5:12] = 1
    image = np.where(label > 0, 50.0, 0.0).astype(np.float32)
    image[35:39, 31:35, 15:18] = 50.0  # far from the label box: the image crop keeps it
    for sub, array in (("images", image), ("labels", label)):
        (folder / sub).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(array, _oblique_affine()), str(folder / sub / f"{name}.nii.gz"))
    return (image > 0).astype(np.uint8)


def test_crop_and_resample_come_back_on_the_original_scan(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    labels = {name: _raw_case(raw, name) for name in ("a", "b")}
    prepare_generic(tmp_path / "ds", root=raw, images="images/*.nii.gz",
                    labels="labels/*.nii.gz", classes={1: "box"}, spacing=(1.0, 1.0, 1.5),
                    crop="nonzero", crop_margin=3, split=SplitOptions(test=1), norm="none")
    dataset = PreparedDataset(tmp_path / "ds")
    case = dataset.split("test")[0]
    geometry = dataset.geometry(case)
    # The box of the non-zero voxels (label box and spot) grown by 3, not the label's box.
    assert geometry.crop == ((3, 20), (2, 18), (2, 20))
    window = Window(patch_size=(8, 8, 8), stride=(4, 4, 4), num_classes=2)
    out = tmp_path / "preds"
    out.mkdir()
    [result] = predict_cases(Threshold(), dataset_cases(dataset, "test"), out, window,
                             labels=BINARY, device=CPU)
    written: Any = nib.load(str(result.path))
    source: Any = nib.load(str(raw / "images" / f"{case}.nii.gz"))
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(written.dataobj), labels[case])
    # ITK-based viewers (ITK-SNAP, 3D Slicer) see the same grid as the source scan.
    ours, theirs = sitk.ReadImage(str(result.path)), sitk.ReadImage(str(source.get_filename()))
    assert ours.GetSize() == theirs.GetSize()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(ours, get)(), getattr(theirs, get)(), atol=1e-5), get


def _blob_case(shape: tuple[int, int, int]) -> InputCase:
    image = -np.ones((1, *shape), np.float32)
    image[0, 2:7, 2:7, 2:7] = 1.0  # 125 voxels
    image[0, 12:14, 12:14, 12:14] = 1.0  # 8 voxels, not touching the first
    geometry = Geometry(shape=shape, spacing=(1.0, 1.0, 1.0))
    case_geometry = CaseGeometry(case="blobs", prepared=geometry, original=geometry)
    return InputCase("blobs", lambda: LoadedCase(image, case_geometry))


@pytest.mark.parametrize("lcc", [False, True])
def test_lcc_keeps_only_the_largest_component(tmp_path: Path, lcc: bool) -> None:
    window = Window(patch_size=(16, 16, 16), stride=(8, 8, 8), num_classes=2, lcc=lcc)
    [result] = predict_cases(Threshold(), [_blob_case((16, 16, 16))], tmp_path, window,
                             labels=BINARY, device=CPU)
    labels, _ = read_volume(result.path)
    assert labels[2:7, 2:7, 2:7].all()
    assert int(labels.sum()) == (125 if lcc else 133)


def _forward_labels(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Reference for one window covering the volume: softmax fg > 0.5 of one forward pass."""
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(np.array(image))[None]), dim=1)[0]
    return (probs[1] > 0.5).numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    root = tmp_path_factory.mktemp("tiny")
    dataset = tiny_dataset(root)
    run, model = tiny_run(root, dataset)
    return dataset, run, model


def test_predict_run_matches_a_direct_forward_pass(
    tiny: tuple[Path, Path, nn.Module], tmp_path: Path
) -> None:
    dataset_dir, run, model = tiny
    dataset = PreparedDataset(dataset_dir)
    out = tmp_path / "preds"
    seen: list[tuple[int, int, str]] = []
    report = predict(run, PredictOptions(device="cpu", out=out),
                     progress=lambda d, t, c: seen.append((d, t, c)))
    test = dataset.split("test")
    assert [c.case for c in report.cases] == test
    assert seen == [(i + 1, len(test), c) for i, c in enumerate(test)]
    assert report.window.patch_size == PATCH and report.window.stride == (8, 8, 8)
    for case in test:
        labels, geometry = read_volume(out / f"{case}.nii.gz")
        assert labels.dtype == np.uint8
        assert geometry.shape == dataset.geometry(case).original.shape
        assert np.array_equal(labels, _forward_labels(model, dataset.image(case)))


def test_default_output_and_evaluation_summary(tiny: tuple[Path, Path, nn.Module]) -> None:
    _, run, _ = tiny
    report = predict(run, PredictOptions(device="cpu", evaluate=True, force=True,
                                         checkpoint="last"))
    assert report.out == run / "eval" / "last" / "preds"
    assert report.summary == run / "eval" / "last" / "summary.json"
    summary = read_summary(report.summary)
    assert sorted(summary.cases) == sorted(c.case for c in report.cases)
    assert report.mean_dice is not None and set(report.mean_dice) == {"1"}


def test_scores_of_predictions_written_elsewhere_go_beside_them(
        tiny: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    """--out elsewhere (here with mirroring) leaves the run's own summary.json alone, which
    holds the default predictions' scores; --out at the default folder writes that one."""
    _, run, _ = tiny
    plain = predict(run, PredictOptions(device="cpu", evaluate=True, force=True,
                                        checkpoint="last"))
    before = plain.summary.read_bytes()
    tta = predict(run, PredictOptions(device="cpu", evaluate=True, checkpoint="last", tta=True,
                                      out=tmp_path / "eval-tta" / "preds"))
    assert tta.summary == tmp_path / "eval-tta" / "summary.json"
    assert plain.summary.read_bytes() == before
    assert read_summary(tta.summary).scoring["tta_axes"] == "[0, 1, 2]"
    assert read_summary(plain.summary).scoring == {"lcc": "false", "tta_axes": "[]",
                                                   "stride": "[8, 8, 8]"}
    again = predict(run, PredictOptions(device="cpu", evaluate=True, force=True,
                                        checkpoint="last", out=plain.out))
    assert again.summary == plain.summary


def test_raw_images_are_preprocessed_like_the_dataset(
    tiny: tuple[Path, Path, nn.Module], tmp_path: Path
) -> None:
    dataset_dir, run, model = tiny
    dataset = PreparedDataset(dataset_dir)
    case = dataset.split("test")[0]
    # The raw scan: the prepared (z-scored) image rescaled, which z-scoring undoes.
    raw = dataset.image(case)[0] * 40.0 + 300.0
    path = tmp_path / "scans" / f"{case}.nrrd"
    write_volume(path, raw, dataset.geometry(case).original)
    report = predict(run, PredictOptions(device="cpu", images=[path.parent],
                                         out=tmp_path / "raw"))
    labels, _ = read_volume(report.cases[0].path)
    expected = _forward_labels(model, dataset.image(case))
    assert np.mean(labels == expected) > 0.999  # float32 rounding may flip a voxel at 0.5


def test_existing_output_needs_force(tiny: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    _, run, _ = tiny
    out = tmp_path / "preds"
    out.mkdir()
    (out / "old.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="already exists and is not empty; use --force"):
        predict(run, PredictOptions(device="cpu", out=out))
    # --force replaces only predictions that hco wrote: the user's folder stays as it was.
    with pytest.raises(OutputError, match="was not written by hco"):
        predict(run, PredictOptions(device="cpu", out=out, force=True))
    assert [p.name for p in out.iterdir()] == ["old.nii.gz"]
    mine = tmp_path / "mine"
    predict(run, PredictOptions(device="cpu", out=mine))
    (mine / "syn_002.nii.gz").write_bytes(b"stale")
    predict(run, PredictOptions(device="cpu", out=mine, force=True))
    assert (mine / "syn_002.nii.gz").stat().st_size > 5


def test_output_may_not_replace_the_inputs(tiny: tuple[Path, Path, nn.Module]) -> None:
    dataset_dir, run, _ = tiny
    with pytest.raises(ConfigError, match="would replace"):
        predict(run, PredictOptions(device="cpu", out=dataset_dir.parent, force=True))


def test_channels_are_grouped_by_case(tmp_path: Path) -> None:
    for name in ("p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0001.mha", "p2_0000.mha"):
        (tmp_path / name).write_bytes(b"")
    groups = group_images([tmp_path], channels=2)
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "p1": ["p1_0000.nii.gz", "p1_0001.nii.gz"], "p2": ["p2_0000.mha", "p2_0001.mha"]}
    with pytest.raises(DataError, match="case p1: 2 image file"):
        group_images([tmp_path], channels=1)


def test_real_scan_resampled_and_cropped_overlays_its_source(
    fetal_source: Path, tmp_path: Path
) -> None:
    """Fetal atlas brain masks (0.8 mm) prepared at 1.6 mm and cropped, predicted by an oracle
    (the mask itself is the image), come back on the source grid and score against it."""
    from hco_cli.evaluation.evaluate import evaluate_folders

    raw, refs = tmp_path / "raw", tmp_path / "refs"
    for folder in (raw / "images", raw / "labels", refs):
        folder.mkdir(parents=True)
    for name in ("GA21_notoperated", "GA30_operated"):
        mask = fetal_source / f"fetal_SB_atlas_{name}" / "mask.nii.gz"
        for link in (raw / "images" / f"{name}.nii.gz", raw / "labels" / f"{name}.nii.gz",
                     refs / f"{name}.nii.gz"):
            link.symlink_to(mask.resolve())
    prepare_generic(tmp_path / "ds", root=raw, images="images/*.nii.gz",
                    labels="labels/*.nii.gz", classes={1: "brain"}, spacing=(1.6, 1.6, 1.6),
                    crop="nonzero", crop_margin=4, split=SplitOptions(test=1))
    dataset = PreparedDataset(tmp_path / "ds")
    case = dataset.split("test")[0]
    assert dataset.geometry(case).crop is not None
    window = Window(patch_size=(48, 48, 48), stride=(40, 40, 40), num_classes=2)
    out = tmp_path / "preds"
    out.mkdir()
    [result] = predict_cases(Threshold(), dataset_cases(dataset, "test"), out, window,
                             labels=BINARY, device=CPU)
    written: Any = nib.load(str(result.path))
    source: Any = nib.load(str(refs / f"{case}.nii.gz"))
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    # The oracle reproduces the prepared label; SimpleITK's nearest-neighbour resampling of it
    # onto the source grid is an independent reference. (The files store 0.799999 mm, so the
    # odd voxels are not exact ties: the physically nearest prepared voxel wins.)
    prepared = sitk.GetImageFromArray(np.ascontiguousarray(dataset.label(case).T))
    geometry = dataset.geometry(case).prepared
    prepared.SetSpacing(geometry.spacing)
    prepared.SetOrigin(geometry.origin)
    prepared.SetDirection(geometry.direction)
    reference = sitk.Resample(prepared, sitk.ReadImage(str(refs / f"{case}.nii.gz")),
                              sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(np.asarray(written.dataobj), sitk.GetArrayFromImage(reference).T)
    summary = evaluate_folders(out, refs, jobs=1, allow_missing=True)  # checks the grid too
    assert summary.mean["1"]["dice"] > 0.95


def test_channels_last_network_predicts_the_same_labels(
    tiny: tuple[Path, Path, nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--channels-last changes the memory layout of the weights, not what they compute: the
    labels equal the contiguous network's (float32 on the CPU; its convolutions may sum in
    another order, far from the 0.5 threshold on this run). Off by default on the CPU."""
    _, run, _ = tiny
    networks: list[nn.Module] = []

    def load(*args: object) -> list:
        loaded = load_runs(*args)  # type: ignore[arg-type]
        networks.extend(r.model for r in loaded)
        return loaded

    monkeypatch.setattr(predict_module, "load_runs", load)
    plain = predict(run, PredictOptions(device="cpu", out=tmp_path / "plain"))
    last = predict(run, PredictOptions(device="cpu", out=tmp_path / "last", channels_last=True))
    assert not plain.channels_last and last.channels_last
    # Weights whose two layouts differ: 5-D, more than one input channel, kernel above 1.
    layouts = [[w.is_contiguous(memory_format=torch.channels_last_3d)
                for w in net.parameters()
                if w.dim() == 5 and w.shape[1] > 1 and w[0, 0].numel() > 1]
               for net in networks]
    assert not any(layouts[0]) and all(layouts[1]) and layouts[1]
    for a, b in zip(plain.cases, last.cases, strict=True):
        assert np.array_equal(read_volume(a.path)[0], read_volume(b.path)[0])


def test_a_dataset_split_again_since_training_is_named(tmp_path: Path) -> None:
    """A run trained on a dataset whose splits.json changed since: the test split may hold
    cases the run trained on, and predict says so (and summary.json keeps it)."""
    dataset = tmp_path / "syn"
    prepare_synthetic(dataset, labeled=2, unlabeled=1, test=2, classes=1, shape=(16, 16, 16))
    run = tmp_path / "run"
    config = tiny_config(dataset).model_dump(mode="json")
    config["data"]["labeled_batch_size"] = 2
    train(validate_config({**config, "run_dir": str(run)}))
    first = predict(run, PredictOptions(device="cpu", out=tmp_path / "a", checkpoint="last"))
    assert first.warnings == []
    splits = json.loads((dataset / "splits.json").read_text(encoding="utf-8"))
    splits["labeled"], splits["test"] = [splits["test"][0]], [splits["labeled"][0],
                                                              *splits["test"][1:]]
    (dataset / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    report = predict(run, PredictOptions(device="cpu", out=tmp_path / "b", evaluate=True,
                                                checkpoint="last"))
    assert len(report.warnings) == 1 and "split again" in report.warnings[0]
    assert str(run) in report.warnings[0]
    assert report.summary is not None
    assert json.loads(report.summary.read_text(encoding="utf-8"))["warnings"] == report.warnings


def test_a_scoring_error_names_the_output_not_its_temporary_folder(
    tiny: tuple[Path, Path, nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reference label on another grid than the scan (a user's own data): the one line
    names the prediction where it would have been written, not the temporary folder it was
    scored in, and nothing is left behind."""
    _, run, _ = tiny
    wrong = tmp_path / "wrong.nii.gz"
    write_volume(wrong, np.zeros((5, 5, 5), np.uint8), Geometry(shape=(5, 5, 5),
                                                                 spacing=(1.0, 1.0, 1.0)))
    monkeypatch.setattr(predict_module, "reference_labels", lambda dataset, cases, split: {
        c: LabelSource("volume", wrong, c) for c in cases})
    out = tmp_path / "preds"
    with pytest.raises(DataError, match="prediction shape") as caught:
        predict(run, PredictOptions(device="cpu", out=out, evaluate=True, checkpoint="last"))
    assert f"({out}/" in str(caught.value) and ".tmp" not in str(caught.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["wrong.nii.gz"]
