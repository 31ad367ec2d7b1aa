"""Image types: complex (and other non-real) scans are refused, not silently cast to float."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from hco_cli.data.labels import build_label_map
from hco_cli.data.plan import DataPlan, PreprocessPlan
from hco_cli.data.prepare import SplitOptions, prepare_generic
from hco_cli.data.preprocess import checked_image
from hco_cli.errors import DataError
from hco_cli.inference.inputs import image_cases
from tests.data.test_channel_geometry import SHAPE, _image, _label, _nifti


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_images_are_refused(dtype: type) -> None:
    image = (1j * np.ones(SHAPE)).astype(dtype)  # all imaginary: a cast gives all zeros
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way to the error either
        with pytest.raises(DataError, match=rf"^case c: image /x/c\.nii\.gz has complex type "
                                            rf"{np.dtype(dtype)}; "):
            checked_image(image, case="c", path="/x/c.nii.gz")


@pytest.mark.parametrize("array", [np.zeros(SHAPE, "m8[s]"), np.zeros(SHAPE, "M8[s]"),
                                   np.zeros(SHAPE, "U2"), np.zeros(SHAPE, object)])
def test_other_non_real_types_are_refused(array: np.ndarray) -> None:
    expected = f"case c: image p has non-numeric type {array.dtype}"
    with pytest.raises(DataError, match=rf"^{re.escape(expected)}$"):
        checked_image(array, case="c", path="p")


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.uint32, np.int64,
                                   np.float16, np.float32, np.float64])
def test_real_images_become_float32(dtype: type) -> None:
    out = checked_image(np.ones(SHAPE, dtype=dtype), case="c", path="p")
    assert out.dtype == np.float32 and np.all(out == 1.0)


def test_prepare_refuses_a_complex_scan(tmp_path: Path) -> None:
    for i in range(3):
        image = _image(i).astype(np.complex64) * 1j if i == 1 else _image(i)
        _nifti(tmp_path / "img" / f"c{i}.nii.gz", image)
        _nifti(tmp_path / "lab" / f"c{i}.nii.gz", _label())
    bad = tmp_path / "img" / "c1.nii.gz"
    with pytest.raises(DataError, match="complex type complex64") as exc:
        prepare_generic(tmp_path / "out", images=str(tmp_path / "img" / "*.nii.gz"),
                        labels=str(tmp_path / "lab" / "*.nii.gz"), split=SplitOptions(labeled=2))
    message = str(exc.value)
    assert "\n" not in message and "case c" in message and str(bad.absolute()) in message


def test_predict_images_refuses_a_complex_scan(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "scans" / "scan.nii.gz", 1j * _image(0).astype(np.complex64))
    plan = DataPlan(preprocess=PreprocessPlan(labels=build_label_map([0, 1])), channels=1,
                    spacing_min=(1.0, 1.0, 1.0), spacing_max=(1.0, 1.0, 1.0),
                    spacing_median=(1.0, 1.0, 1.0), source="test")
    [case] = image_cases([path], plan)
    with pytest.raises(DataError, match=r"^case scan: image .*scan\.nii\.gz has complex type "
                                        r"complex64; [^\n]*$"):
        case.load()
