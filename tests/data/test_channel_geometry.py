"""Multi-channel cases: every channel must lie on channel 0's voxel grid (shape, spacing,
origin, direction), for ``hco prepare`` (generic/nnU-Net sources) and ``hco predict --images``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.labels import build_label_map
from hco_cli.data.plan import DataPlan, PreprocessPlan
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.data.sources import SourceCase
from hco_cli.data.sources.load import load_case
from hco_cli.errors import DataError
from hco_cli.inference.inputs import image_cases

SHAPE = (12, 10, 8)
MIRRORED = np.diag([-1.0, 1.0, 1.0, 1.0])
SPACED = np.diag([1.5, 1.0, 1.0, 1.0])
SHIFTED = np.array([[1.0, 0, 0, 5.0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
# channel 1's affine -> what the one-line error names
MISMATCHES = [(MIRRORED, "direction"), (SPACED, "spacing"), (SHIFTED, "origin")]


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _image(seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).normal(0.0, 5.0, SHAPE).astype(np.float32)
    image[3:9, 2:8, 2:6] += 100.0
    return image


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[4:8, 3:7, 3:5] = 1
    return label


def _channels(folder: Path, case: str, affine: np.ndarray | None) -> tuple[Path, Path]:
    return (_nifti(folder / f"{case}_0000.nii.gz", _image(0)),
            _nifti(folder / f"{case}_0001.nii.gz", _image(1), affine))


def _message(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("affine", "what"), MISMATCHES)
def test_a_channel_off_channel_0s_grid_is_refused(tmp_path: Path, affine: np.ndarray,
                                                  what: str) -> None:
    first, second = _channels(tmp_path, "case", affine)
    with pytest.raises(DataError) as exc:
        load_case(SourceCase("case", "volume", images=(first, second)))
    message = _message(exc)
    assert message.startswith("case case: channel 1 ")
    assert str(first) in message and str(second) in message
    assert f"has {what} " in message and "but channel 0 " in message


def test_a_channel_of_another_shape_is_refused(tmp_path: Path) -> None:
    first = _nifti(tmp_path / "case_0000.nii.gz", _image(0))
    second = _nifti(tmp_path / "case_0001.nii.gz", _image(1)[:, :, :6])
    with pytest.raises(DataError, match=r"^case case: channel 1 .* has shape \(12, 10, 6\) but "
                                        r"channel 0 .* has shape \(12, 10, 8\)$"):
        load_case(SourceCase("case", "volume", images=(first, second)))


def test_channels_within_the_label_tolerances_are_stacked(tmp_path: Path) -> None:
    """The tolerances of the label check apply: float32 header rounding is no mismatch."""
    nearly = np.diag([1.0 + 1e-5, 1.0, 1.0, 1.0])
    nearly[:3, 3] = (1e-3, 0.0, -1e-3)
    first, second = _channels(tmp_path, "case", nearly)
    raw = load_case(SourceCase("case", "volume", images=(first, second)))
    assert raw.image.shape == (2, *SHAPE)
    np.testing.assert_array_equal(raw.image[1], _image(1))


def _nnunet(root: Path, affine: np.ndarray | None) -> Path:
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1},
            "numTraining": 3, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for i in range(3):
        _channels(root / "imagesTr", f"toy_{i:03d}", affine if i == 1 else None)
        _nifti(root / "labelsTr" / f"toy_{i:03d}.nii.gz", _label())
    return root


@pytest.mark.parametrize(("affine", "what"), MISMATCHES)
def test_prepare_refuses_an_nnunet_case_whose_channels_do_not_line_up(
        tmp_path: Path, affine: np.ndarray, what: str) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", affine)
    with pytest.raises(DataError) as exc:
        prepare_generic(tmp_path / "out", root=root, split=SplitOptions(labeled=2))
    message = _message(exc)
    assert "case toy_001" in message and f"has {what} " in message
    assert "toy_001_0000.nii.gz" in message and "toy_001_0001.nii.gz" in message


def test_prepare_takes_an_nnunet_case_whose_channels_line_up(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", None)
    prepare_generic(tmp_path / "out", root=root, split=SplitOptions(labeled=2))
    assert (tmp_path / "out" / "dataset.json").is_file()


def _plan() -> DataPlan:
    return DataPlan(preprocess=PreprocessPlan(labels=build_label_map([0, 1])), channels=2,
                    spacing_min=(1.0, 1.0, 1.0), spacing_max=(1.0, 1.0, 1.0),
                    spacing_median=(1.0, 1.0, 1.0), source="test")


@pytest.mark.parametrize(("affine", "what"), MISMATCHES)
def test_predict_images_refuses_channels_that_do_not_line_up(
        tmp_path: Path, affine: np.ndarray, what: str) -> None:
    first, second = _channels(tmp_path / "scans", "scan", affine)
    [case] = image_cases([tmp_path / "scans"], _plan())
    with pytest.raises(DataError) as exc:
        case.load()
    message = _message(exc)
    assert message.startswith("case scan: channel 1 ") and f"has {what} " in message
    assert str(first) in message and str(second) in message


def test_predict_images_loads_channels_that_line_up(tmp_path: Path) -> None:
    _channels(tmp_path / "scans", "scan", None)
    [case] = image_cases([tmp_path / "scans"], _plan())
    assert case.load().image.shape == (2, *SHAPE)


@pytest.mark.parametrize(("affine", "shown"), [
    (np.array([[1.0, 0, 0, 5.0], [0, 1.0, 0, -7.5], [0, 0, 1.0, 2.0], [0, 0, 0, 1.0]]),
     "has origin (RAS, mm) (5, -7.5, 2) but channel 0 {first} has (0, 0, 0)"),
    (MIRRORED, "has direction (RAS) (-1, 0, 0, 0, 1, 0, 0, 0, 1) but channel 0 {first} has "
               "(1, 0, 0, 0, 1, 0, 0, 0, 1)"),
])
def test_origins_and_directions_are_shown_as_the_nifti_header_has_them(
        tmp_path: Path, affine: np.ndarray, shown: str) -> None:
    """Geometry is held in LPS; the message shows the RAS numbers of the files' affines (what
    nibabel prints), not x and y with their signs flipped."""
    first, second = _channels(tmp_path, "case", affine)
    with pytest.raises(DataError) as exc:
        load_case(SourceCase("case", "volume", images=(first, second)))
    assert _message(exc).endswith(shown.format(first=first))
