"""NIfTI headers on the way in and out: spatial units, and predictions that keep the source
scan's qform and sform so that ITK tools overlay them where they show the scan."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.io import read_volume, write_volume
from hco_cli.data.preprocess import check_resampled_size
from hco_cli.errors import DataError

# ITK's reading is the reference here; the GPU image has no SimpleITK, so there this module is
# skipped (a core dependency elsewhere: CI runs it).
sitk = pytest.importorskip("SimpleITK")


def _scan(path: Path, *, units: str = "mm") -> Path:
    """A 6x5x4 scan whose qform (code 1) and sform (code 2) place it 60 mm apart."""
    data = np.arange(120, dtype=np.float32).reshape(6, 5, 4)
    sform = np.array([[-0.8, 0, 0, 30.0], [0, 0.8, 0, -20.0], [0, 0, 1.5, 50.0], [0, 0, 0, 1]])
    qform = sform.copy()
    qform[:3, 3] = [-10.0, 40.0, 10.0]
    image = nib.Nifti1Image(data, sform)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    image.header.set_xyzt_units(units)
    nib.save(image, str(path))
    return path


def _itk_place(path: Path) -> tuple[tuple[float, ...], ...]:
    image = sitk.ReadImage(str(path))
    return image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def test_prediction_keeps_the_scan_transforms(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "scan.nii.gz")
    array, geometry = read_volume(scan)
    labels = (array > 60).astype(np.uint8)
    write_volume(tmp_path / "pred.nii.gz", labels, geometry, header_of=scan)
    src, out = nib.load(str(scan)).header, nib.load(str(tmp_path / "pred.nii.gz")).header
    assert int(out["qform_code"]) == 1 and int(out["sform_code"]) == 2
    np.testing.assert_allclose(out.get_qform(), src.get_qform(), atol=1e-5)
    np.testing.assert_allclose(out.get_sform(), src.get_sform(), atol=1e-5)
    for a, b in zip(_itk_place(tmp_path / "pred.nii.gz"), _itk_place(scan), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    back, again = read_volume(tmp_path / "pred.nii.gz")
    assert np.array_equal(back, labels) and again == geometry
    # without the source, only nibabel's choice (the sform) is written: an ITK reader that
    # takes the scan's qform places the two 60 mm apart, which is what header_of prevents
    write_volume(tmp_path / "bare.nii.gz", labels, geometry)
    assert int(nib.load(str(tmp_path / "bare.nii.gz")).header["qform_code"]) == 0


def test_a_source_on_another_grid_lends_no_header(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "scan.nii.gz")
    _, geometry = read_volume(scan)
    moved = geometry.model_copy(update={"origin": (0.0, 0.0, 0.0)})
    write_volume(tmp_path / "pred.nii.gz", np.zeros((6, 5, 4), np.uint8), moved, header_of=scan)
    assert read_volume(tmp_path / "pred.nii.gz")[1] == moved
    write_volume(tmp_path / "p2.nii.gz", np.zeros((6, 5, 4), np.uint8), geometry,
                 header_of=tmp_path / "gone.nii.gz")  # a moved source: the default header
    assert read_volume(tmp_path / "p2.nii.gz")[1] == geometry


def test_micron_and_metre_files_are_read_in_millimetres(tmp_path: Path) -> None:
    for units, scale in (("micron", 1e-3), ("meter", 1e3), ("mm", 1.0), ("unknown", 1.0)):
        scan = _scan(tmp_path / f"{units}.nii.gz", units=units)
        _, geometry = read_volume(scan)
        np.testing.assert_allclose(geometry.spacing, np.array([0.8, 0.8, 1.5]) * scale)
        np.testing.assert_allclose(geometry.spacing, sitk.ReadImage(str(scan)).GetSpacing(),
                                   rtol=1e-6)
        # a prediction on it keeps its unit and transforms: ITK places both alike
        write_volume(tmp_path / f"p-{units}.nii.gz", np.zeros((6, 5, 4), np.uint8), geometry,
                     header_of=scan)
        for a, b in zip(_itk_place(tmp_path / f"p-{units}.nii.gz"), _itk_place(scan),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_metre_scan_resampled_to_millimetres_is_refused_in_one_line(tmp_path: Path) -> None:
    _, geometry = read_volume(_scan(tmp_path / "m.nii.gz", units="meter"))
    with pytest.raises(DataError, match=r"case m \(.*m.nii.gz\): resampling spacing "
                                        r"800x800x1500 mm to 0.8x0.8x1.5 mm would make a "
                                        r"\(6000, 5000, 4000\) grid .*xyzt_units"):
        check_resampled_size(geometry, (0.8, 0.8, 1.5), case="m", path=str(tmp_path / "m.nii.gz"))
    check_resampled_size(geometry, (800.0, 800.0, 1500.0), case="m", path="m.nii.gz")


@pytest.mark.parametrize(("affine", "why"), [
    (np.diag([np.nan, 1.0, 1.0, 1.0]), "NaN or infinite"),
    (np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "nearly\\) parallel"),
    (np.diag([0.0, 1.0, 1.0, 1.0]), "zero length"),
])
def test_degenerate_affines_are_refused_with_the_file(tmp_path: Path, affine: np.ndarray,
                                                      why: str) -> None:
    path = tmp_path / "bad.nii.gz"
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    image.header.set_sform(affine, code=2)  # written as given, not made orthogonal
    nib.save(image, str(path))
    with pytest.raises(DataError, match=f"bad.nii.gz: .*{why}"):
        read_volume(path)
