"""The plain NIfTI reader gives what nibabel gives, or declines the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hco_cli.data.io import read_volume
from hco_cli.data.nifti import read_plain_nifti
from hco_cli.errors import DataError

AFFINE = np.array([[-0.7, 0.01, 0.0, 12.5], [0.0, 0.9, 0.02, -30.25], [0.0, 0.0, 2.5, 4.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _write(path: Path, array: np.ndarray, *, sform: int = 2, qform: int = 0,
           slope: float = np.nan, inter: float = np.nan, extension: bool = False,
           big_endian: bool = False) -> None:
    """A NIfTI-1 file whose transform codes and scaling are patched in after nibabel wrote it
    (nibabel's save fills in a transform code that is 0)."""
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    header.set_data_dtype(array.dtype)
    image = nib.Nifti1Image(array, AFFINE, header)
    if extension:
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"hco test" * 5))
    plain = path.with_name("plain.nii")
    nib.save(image, str(plain))
    order = ">" if big_endian else "<"
    raw = bytearray(plain.read_bytes())
    struct.pack_into(order + "2f", raw, 112, slope, inter)
    struct.pack_into(order + "2h", raw, 252, qform, sform)
    plain.unlink()
    path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))


def _assert_as_nibabel(path: Path) -> None:
    plain = read_plain_nifti(path)
    assert plain is not None
    image = nib.load(str(path))
    want = np.asanyarray(image.dataobj)
    array, affine = plain
    assert array.dtype == want.dtype and array.shape == want.shape
    assert array.flags.f_contiguous and array.flags.writeable
    np.testing.assert_array_equal(array, want)
    np.testing.assert_array_equal(affine, image.affine)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "int32", "float32",
                                   "float64", "int64"])
def test_plain_files_read_as_nibabel_reads_them(tmp_path: Path, suffix: str, dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((7, 5, 4)) * 100).astype(dtype)
    path = tmp_path / f"case{suffix}"
    _write(path, array)
    _assert_as_nibabel(path)


@pytest.mark.parametrize("options", [
    {"big_endian": True}, {"extension": True}, {"qform": 1, "sform": 1}, {"sform": 4},
    {"slope": 1.0, "inter": 0.0}, {"slope": 0.0, "inter": 5.0},
])
def test_headers_that_need_no_nibabel(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "case.nii.gz"
    _write(path, np.arange(60, dtype=np.int16).reshape(5, 4, 3), **options)
    _assert_as_nibabel(path)


def test_four_dimensional_and_one_dimensional(tmp_path: Path) -> None:
    for shape in ((4, 3, 2, 1), (6,), (3, 2, 2, 2)):
        path = tmp_path / f"v{len(shape)}.nii.gz"
        _write(path, np.arange(np.prod(shape), dtype=np.uint8).reshape(shape))
        _assert_as_nibabel(path)


@pytest.mark.parametrize("options", [
    {"sform": 0, "qform": 1}, {"sform": 0, "qform": 0}, {"slope": 2.0, "inter": 0.0},
    {"slope": 1.0, "inter": 3.0},
])
def test_other_headers_are_left_to_nibabel(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "case.nii.gz"
    array = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    _write(path, array, **options)
    assert read_plain_nifti(path) is None
    got, geometry = read_volume(path)  # through nibabel
    image = nib.load(str(path))
    np.testing.assert_array_equal(got, np.asanyarray(image.dataobj))
    assert geometry.shape == (5, 4, 3)


def test_nifti2_and_pairs_are_left_to_nibabel(tmp_path: Path) -> None:
    array = np.ones((3, 3, 3), np.uint8)
    nib.save(nib.Nifti2Image(array, AFFINE), str(tmp_path / "two.nii"))
    nib.save(nib.Nifti1Pair(array, AFFINE), str(tmp_path / "pair.img"))
    assert read_plain_nifti(tmp_path / "two.nii") is None
    assert read_plain_nifti(tmp_path / "pair.hdr") is None


def test_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "case.nii"
    _write(path, np.ones((8, 8, 8), np.int16))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_plain_nifti(path)
    with pytest.raises(DataError, match="truncated"):
        read_volume(path)


def test_read_volume_geometry_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "case.nii.gz"
    _write(path, np.zeros((5, 4, 3), np.uint8), qform=1)
    _, geometry = read_volume(path)
    image = nib.load(str(path))
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    assert geometry.spacing == pytest.approx(tuple(spacing), rel=0, abs=0)
    assert geometry.origin == (-12.5, 30.25, 4.0)
