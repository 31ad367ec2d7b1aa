"""DICOM series, NRRD and MHA written with SimpleITK round-trip through prepare's reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.io import read_volume
from hco_cli.data.prepare import prepare_generic

# A reference only; the GPU image has no SimpleITK, so there this module is skipped.
sitk = pytest.importorskip("SimpleITK")

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-12.5, 30.0, 4.0)


def _volume() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(-500, 1500, (12, 10, 6)).astype(np.int16)  # (x, y, z)


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def _write_dicom_series(folder: Path, array: np.ndarray) -> None:
    folder.mkdir(parents=True)
    volume = _image(array)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.424242"
    for z in range(array.shape[2]):
        piece = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT", "0020|000e": series, "0020|000d": series + ".1",
            "0020|0013": str(z + 1), "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": f"{SPACING[2]}",
            "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(piece)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", "dicom"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    array = _volume()
    path = tmp_path / "scans" / "case1" / ("series" if suffix == "dicom" else f"ct{suffix}")
    if suffix == "dicom":
        _write_dicom_series(path, array)
    else:
        path.parent.mkdir(parents=True)
        sitk.WriteImage(_image(array), str(path))
    read, geometry = read_volume(path)
    np.testing.assert_array_equal(read, array)
    assert geometry.shape == (12, 10, 6)
    assert geometry.spacing == pytest.approx(SPACING, abs=1e-4)
    assert geometry.origin == pytest.approx(ORIGIN, abs=1e-4)
    assert geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))

    label = (array > 1000).astype(np.uint8)
    sitk.WriteImage(_image(label), str(tmp_path / "scans" / "case1" / "seg.mha"))
    pattern = "*/series" if suffix == "dicom" else f"*/ct{suffix}"
    prepare_generic(tmp_path / "out", root=tmp_path / "scans", images=pattern,
                    labels="*/seg.mha", norm="none")
    data = PreparedDataset(tmp_path / "out")
    np.testing.assert_array_equal(data.image("case1")[0], array.astype(np.float32))
    np.testing.assert_array_equal(data.label("case1"), label)
    assert data.geometry("case1").original.origin == pytest.approx(ORIGIN, abs=1e-4)
