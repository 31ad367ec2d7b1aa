"""Plain NIfTI-1 files read without nibabel: the common case, exactly as nibabel reads it.

``import nibabel`` costs about 35 ms and each ``nib.load`` about 2 ms of overhead on top of the
decompression, which is most of the reading time of an ``hco evaluate`` process on small label
maps. :func:`read_plain_nifti` handles single-file NIfTI-1 (``.nii``, ``.nii.gz``) with:

- a valid sform (code 1-4): nibabel's affine is then the sform rows, as float64;
- a numeric data type (integers, float32, float64), either byte order;
- no intensity scaling: ``scl_slope`` 0 or not finite, or slope 1 and intercept 0 (nibabel
  then returns the stored values unscaled, in the stored dtype);
- spatial units of millimetres or unknown (``xyzt_units``): metres and microns go through
  nibabel, where :mod:`hco_cli.data.io` scales their affine to millimetres.

For anything else (qform-only or no transform, scaling, NIfTI-2, an Analyze pair, a FreeSurfer
header) it returns None, and the caller loads the file with nibabel. The array is the one
nibabel gives: the stored dtype (byte order included), shape ``dim[1:dim[0] + 1]``, Fortran
order (x fastest), writable.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np

from hco_cli.errors import DataError

HEADER_SIZE = 348
_MIN_OFFSET = 352  # header plus the 4-byte extension flag
_MAGIC = b"n+1\x00"
_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
           1024: "i8", 1280: "u8"}
_FREESURFER_ICO7 = (27307, 1, 6)  # nibabel reinterprets this shape
_METER, _MICRON = 1, 3  # NIfTI's spatial unit codes (xyzt_units & 7); 2 is mm, 0 unknown


def read_plain_nifti(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(array, 4x4 affine) of a plain NIfTI-1 file, or None when nibabel must read it."""
    with _open(path) as handle:
        header = handle.read(HEADER_SIZE)
        layout = _layout(header)
        if layout is None:
            return None
        dtype, shape, offset, affine = layout
        array = np.empty(shape, dtype=dtype, order="F")
        skipped = len(handle.read(offset - HEADER_SIZE))  # extensions: read past, not parsed
        if skipped < offset - HEADER_SIZE or _read_into(handle, array) < array.nbytes:
            raise DataError(f"{path}: truncated NIfTI file ({array.nbytes} data bytes expected "
                            f"from byte {offset})")
    return array, affine


def _read_into(handle: io.BufferedIOBase, array: np.ndarray) -> int:
    """Fill the (contiguous) array from the stream; the number of bytes read."""
    target = array.reshape(-1, order="A").view(np.uint8).data  # a memoryview
    done = 0
    while done < len(target):
        count = handle.readinto(target[done:])
        if not count:
            break
        done += count
    return done


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], int, np.ndarray] | None:
    """dtype, shape, data offset and affine of a plain header; None for anything else."""
    if len(header) < HEADER_SIZE or header[344:348] != _MAGIC:
        return None
    for order in "<>":
        if struct.unpack_from(order + "i", header, 0)[0] == HEADER_SIZE:
            break
    else:
        return None
    dim = struct.unpack_from(order + "8h", header, 40)
    datatype = struct.unpack_from(order + "h", header, 70)[0]
    offset, slope, inter = struct.unpack_from(order + "3f", header, 108)
    sform_code = struct.unpack_from(order + "h", header, 254)[0]
    if header[123] & 0x07 in (_METER, _MICRON):
        return None
    ndim = dim[0]
    shape = tuple(int(v) for v in dim[1:ndim + 1])
    if (not 1 <= ndim <= 7 or min(shape) < 1 or shape[:3] == _FREESURFER_ICO7
            or datatype not in _DTYPES or not 1 <= sform_code <= 4
            or offset != int(offset) or offset < _MIN_OFFSET):
        return None
    scaled = bool(np.isfinite(slope)) and slope != 0 and (slope, inter) != (1.0, 0.0)
    if scaled:
        return None
    rows = np.asarray(struct.unpack_from(order + "12f", header, 280), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :] = rows.reshape(3, 4)
    return np.dtype(order + _DTYPES[datatype]), shape, int(offset), affine
