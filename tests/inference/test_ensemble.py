"""Ensembles of runs, test-time mirroring, probabilities and uncertainty, end to end: raw scans
predicted from the runs alone equal the prepared path, and every average equals the one
computed by hand from single predictions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.io import read_volume
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.errors import ConfigError, DataError
from hco_cli.inference.inputs import dataset_cases
from hco_cli.inference.predict import (
    Outputs,
    PredictOptions,
    Window,
    predict,
    predict_cases,
)
from hco_cli.inference.probabilities import normalized_entropy
from hco_cli.inference.runs import expand_runs
from hco_cli.inference.sliding_window import logits_of, mirror_sets
from tests.inference.tiny_run import tiny_run

CPU = torch.device("cpu")
VALUES = (0, 10, 20)
SHAPE = (40, 36, 14)


class Mirrored(nn.Module):
    """A network applied to its input mirrored along ``axes``, logits mirrored back."""

    def __init__(self, model: nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.dims = model, [a + 2 for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return logits_of(self.model(x))
        return torch.flip(logits_of(self.model(torch.flip(x, self.dims))), self.dims)


def _raw(root: Path, n: int = 4) -> Path:
    """Scans with a body (two organs, label values 10 and 20) and noise, 0.75 x 0.75 x 2 mm."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        label[10 + i:30 + i, 8:28, 3:11] = 10
        label[14:22, 14:22, 5:9] = 20
        image = (label / 10 + rng.normal(0, 0.3, SHAPE)).astype(np.float32)
        image[:10] = 0  # empty border: the Otsu crop removes most of it
        for kind, array in (("images", image), ("labels", label)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.diag([0.75, 0.75, 2.0, 1.0])),
                     str(root / kind / f"p{i}.nii.gz"))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    raw = _raw(root / "raw")
    prepare_generic(root / "ds", root=raw, images="images/*.nii.gz", labels="labels/*.nii.gz",
                    spacing=(1.5, 1.5, 2.0), crop="otsu", crop_margin=1,
                    split=SplitOptions(labeled=2, test=2))
    runs = {name: tiny_run(root / "runs", root / "ds", classes=3, seed=seed, name=name)[0]
            for name, seed in (("a", 1), ("b", 2))}
    return {"root": root, "raw": raw, "ds": root / "ds", **runs}


def _predict(runs: list[Path], out: Path, **options: object) -> dict[str, np.ndarray]:
    report = predict(runs, PredictOptions(device="cpu", checkpoint="last", out=out,
                                          save_probabilities=True, **options))  # type: ignore[arg-type]
    return {c.case: np.load(out / f"{c.case}.npz")["probabilities"] for c in report.cases}


def test_ensemble_of_two_runs_is_the_average_of_their_probabilities(
    setup: dict[str, Path], tmp_path: Path,
) -> None:
    a = _predict([setup["a"]], tmp_path / "a")
    b = _predict([setup["b"]], tmp_path / "b")
    both = _predict([setup["a"], setup["b"]], tmp_path / "ab")
    assert sorted(both) == sorted(a) and len(both) == 2
    for case, probs in both.items():
        manual = (a[case].astype(np.float64) + b[case]) / 2
        np.testing.assert_allclose(probs, manual, rtol=0, atol=1e-6)
        assert np.abs(a[case] - b[case]).max() > 0.01  # the two runs differ
        labels, _ = read_volume(tmp_path / "ab" / f"{case}.nii.gz")
        np.testing.assert_array_equal(labels, np.asarray(VALUES)[manual.argmax(0)])


def test_tta_is_the_average_over_the_eight_mirrored_copies(
    setup: dict[str, Path], tmp_path: Path,
) -> None:
    got = _predict([setup["a"]], tmp_path / "tta", tta=True)
    _, model = tiny_run(tmp_path, setup["ds"], classes=3, seed=1)  # run a's network
    dataset = PreparedDataset(setup["ds"])
    window = Window(patch_size=(16, 16, 16), stride=(8, 8, 8), num_classes=3, batch_size=2)
    manual: dict[str, np.ndarray] = {}
    for axes in mirror_sets((0, 1, 2)):
        out = tmp_path / "manual" / "".join(map(str, axes))
        out.mkdir(parents=True)
        for c in predict_cases(Mirrored(model, axes), dataset_cases(dataset, "test"), out, window,
                               labels=dataset.labels, device=CPU,
                               outputs=Outputs(probabilities=True)):
            probs = np.load(out / f"{c.case}.npz")["probabilities"].astype(np.float64)
            manual[c.case] = manual.get(c.case, 0) + probs / 8
    plain = _predict([setup["a"]], tmp_path / "plain")
    for case, probs in got.items():
        np.testing.assert_allclose(probs, manual[case], rtol=0, atol=1e-6)
        assert np.abs(probs - plain[case]).max() > 1e-3  # mirroring changes the result


def test_probabilities_sum_to_one_and_their_argmax_is_the_label_map(
    setup: dict[str, Path], tmp_path: Path,
) -> None:
    report = predict([setup["a"], setup["b"]], PredictOptions(
        device="cpu", out=tmp_path / "p", save_probabilities=True, uncertainty=True))
    for c in report.cases:
        labels, geometry = read_volume(c.path)
        saved = np.load(tmp_path / "p" / f"{c.case}.npz")
        probs = saved["probabilities"]
        assert probs.dtype == np.float32 and probs.shape == (3, *SHAPE) == (3, *labels.shape)
        assert saved["label_values"].tolist() == list(VALUES)
        np.testing.assert_allclose(probs.sum(0), 1.0, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(VALUES)[probs.argmax(0)], labels)
        assert (probs[0][:4] == 1).all()  # cropped away: certain background
        np.testing.assert_allclose(saved["affine"], nib.load(c.path).affine, atol=1e-9)
        entropy, entropy_geometry = read_volume(tmp_path / "p" / "uncertainty" /
                                                f"{c.case}.nii.gz")
        assert entropy.dtype == np.float32 and entropy_geometry == geometry
        np.testing.assert_allclose(entropy, normalized_entropy(probs), rtol=0, atol=1e-6)
        assert entropy.max() <= 1 + 1e-6 and entropy.max() > 0.1 and (entropy[:4] == 0).all()


def test_two_class_background_is_the_complement_the_threshold_uses(tmp_path: Path) -> None:
    from tests.inference.tiny_run import tiny_dataset

    dataset = tiny_dataset(tmp_path)
    run, _ = tiny_run(tmp_path, dataset, classes=2, which=("best",))
    report = predict(run, PredictOptions(device="cpu", out=tmp_path / "p",
                                         save_probabilities=True))
    for c in report.cases:
        probs = np.load(tmp_path / "p" / f"{c.case}.npz")["probabilities"]
        labels, _ = read_volume(c.path)
        np.testing.assert_array_equal(probs[0], 1 - probs[1])
        np.testing.assert_array_equal(labels, (probs[1] > 0.5).astype(labels.dtype))
        np.testing.assert_array_equal(labels, probs.argmax(0))
    assert abs(normalized_entropy(np.full((2, 1), 0.5))[0] - 1) < 1e-6
    assert normalized_entropy(np.eye(3)[:, :, None])[0, 0] == 0
    assert math.isclose(float(normalized_entropy(np.array([[0.25], [0.75]]))[0]),
                        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2),
                        rel_tol=1e-6)


def test_raw_scans_from_the_runs_alone_equal_the_prepared_path(
    setup: dict[str, Path], tmp_path: Path,
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(setup["root"] / "runs", root / "runs")
    shutil.copytree(setup["ds"], root / "ds")
    runs = [root / "runs" / "a", root / "runs" / "b"]
    prepared = _predict(runs, tmp_path / "prepared", tta=True)
    shutil.rmtree(root / "ds")  # the runs carry their plan
    scans = [setup["raw"] / "images" / f"{case}.nii.gz" for case in prepared]
    raw = _predict([root / "runs" / "*"], tmp_path / "raw", tta=True, images=scans)
    assert sorted(raw) == sorted(prepared)
    for case, probs in raw.items():
        np.testing.assert_array_equal(probs, prepared[case])
        np.testing.assert_array_equal(read_volume(tmp_path / "raw" / f"{case}.nii.gz")[0],
                                      read_volume(tmp_path / "prepared" / f"{case}.nii.gz")[0])


def test_runs_must_agree_on_patch_and_plan(setup: dict[str, Path], tmp_path: Path) -> None:
    other, _ = tiny_run(tmp_path, setup["ds"], classes=3, name="big", patch=(32, 32, 16))
    with pytest.raises(DataError, match=r"runs disagree on the patch: .* 16x16x16 and 32x32x16"):
        predict([setup["a"], other], PredictOptions(device="cpu", out=tmp_path / "o"))
    changed = tmp_path / "changed"
    shutil.copytree(setup["b"], changed)
    plan = json.loads((changed / "plans.json").read_text(encoding="utf-8"))
    plan["preprocess"]["crop_margin"] = 3
    (changed / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    with pytest.raises(DataError, match=r"differ in preprocess.crop_margin \(1 vs 3\)"):
        predict([setup["a"], changed], PredictOptions(device="cpu", out=tmp_path / "o"))
    binary, _ = tiny_run(tmp_path, setup["ds"], classes=2, name="binary")
    with pytest.raises(DataError, match="runs disagree on channels and classes"):
        predict([setup["a"], binary], PredictOptions(device="cpu", out=tmp_path / "o"))
    with pytest.raises(ConfigError, match="2 runs form an ensemble: choose where"):
        predict([setup["a"], setup["b"]], PredictOptions(device="cpu"))
    with pytest.raises(ConfigError, match="is given twice"):
        expand_runs([setup["a"], setup["a"].parent / "." / "a"])
    assert expand_runs([setup["a"].parent / "*"]) == [setup["a"], setup["b"]]


def test_quoted_image_globs_are_expanded(setup: dict[str, Path], tmp_path: Path) -> None:
    report = predict(setup["a"], PredictOptions(
        device="cpu", out=tmp_path / "g", images=[setup["raw"] / "images" / "p[01].nii.gz"]))
    assert [c.case for c in report.cases] == ["p0", "p1"]
    with pytest.raises(DataError, match=r"--images .*nothing\*.nii.gz matches no file"):
        predict(setup["a"], PredictOptions(device="cpu", out=tmp_path / "h",
                                           images=[tmp_path / "nothing*.nii.gz"]))


def test_runs_without_their_own_plan_are_compared_by_their_datasets_plans(
    setup: dict[str, Path], tmp_path: Path,
) -> None:
    other = tmp_path / "ds2"
    shutil.copytree(setup["ds"], other)
    plan = json.loads((other / "plans.json").read_text(encoding="utf-8"))
    plan["preprocess"]["norm"] = "none"
    (other / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    first, _ = tiny_run(tmp_path, setup["ds"], classes=3, name="old1")
    second, _ = tiny_run(tmp_path, other, classes=3, name="old2")
    for run in (first, second):
        (run / "plans.json").unlink()  # runs trained before plans were copied
    scan = setup["raw"] / "images" / "p0.nii.gz"
    with pytest.raises(DataError, match=r"differ in preprocess.norm \(zscore vs none\)"):
        predict([first, second], PredictOptions(device="cpu", out=tmp_path / "o", images=[scan]))
