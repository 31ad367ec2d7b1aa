"""Reading and writing medical volumes with their physical geometry.

NIfTI goes through nibabel (no SimpleITK needed, so GPU machines can do without it), except
plain files, which :mod:`hco_cli.data.nifti` reads the same way without loading nibabel; NRRD,
MHA/MHD and DICOM series go through SimpleITK, imported only when such a file is met.
Arrays are returned indexed (x, y, z); geometry follows ITK's LPS convention
(see :mod:`hco_cli.data.dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hco_cli.data.dataset import Geometry
from hco_cli.data.nifti import read_plain_nifti
from hco_cli.errors import DataError, MissingExtraError
from hco_cli.io_utils import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_suffix(path: Path) -> str:
    """The volume extension of ``path`` ('.nii.gz' counts as one), or '' if none is known."""
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def case_id_from_path(path: Path) -> str:
    """File name without its volume extension: a label's or a prediction's case id (images
    may carry an nnU-Net channel tag besides, see :func:`channel_tag`)."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def channel_tag(stem: str) -> tuple[str, int] | None:
    """``("case", 1)`` for ``case_0001``: the case and channel an nnU-Net-style image name
    would give; None where the name ends in no ``_dddd``."""
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
        return stem[:-5], int(stem[-4:])
    return None


def is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D volume as an (x, y, z) array plus its geometry."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    suffix = volume_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            return _read_nifti(path)
        if suffix in ITK_SUFFIXES or is_dicom_dir(path):
            return _read_itk(path)
    except DataError:
        raise
    except Exception as exc:  # the readers raise many unrelated types on corrupt files
        raise DataError(f"cannot read {path}: {exc}") from exc
    raise DataError(f"{path}: unsupported volume format (use NIfTI, NRRD, MHA/MHD or DICOM)")


def write_volume(path: Path, array: np.ndarray, geometry: Geometry, *,
                 header_of: Path | None = None) -> None:
    """Write an (x, y, z) array with ``geometry`` atomically; the format follows the extension.

    ``header_of``: the NIfTI file the array lies on (a prediction's source scan). Where it is
    there, on ``geometry``'s grid, its qform and sform with their codes and its spatial unit
    are written as they are, so that every reader (nibabel prefers the sform, ITK tools may
    take the qform) places the output where it places that scan, even where the two
    transforms of the scan disagree."""
    path = Path(path)
    suffix = volume_suffix(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise DataError(f"{path}: array shape {array.shape} does not match {geometry.shape}")
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        image = nib.Nifti1Image(np.asarray(array), affine_from_geometry(geometry))
        image.header.set_xyzt_units("mm")
        source = _nifti_header_on(header_of, geometry) if header_of is not None else None
        if source is not None:
            image.set_qform(source.get_qform(), code=int(source["qform_code"]))
            image.set_sform(source.get_sform(), code=int(source["sform_code"]))
            image.header.set_xyzt_units(*source.get_xyzt_units())
        with atomic_path(path, suffix=suffix) as tmp:
            nib.save(image, str(tmp))
    elif suffix in ITK_SUFFIXES:
        sitk = _simpleitk()
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
        with atomic_path(path, suffix=suffix) as tmp:
            sitk.WriteImage(image, str(tmp), True)
    else:
        raise DataError(f"{path}: unsupported output format (use .nii.gz, .nrrd or .mha)")


def _nifti_header_on(path: Path, geometry: Geometry) -> Any | None:
    """The header of NIfTI file ``path`` where the file is there and lies on ``geometry``'s
    grid (shape, spacing, origin, direction), else None."""
    if volume_suffix(path) not in NIFTI_SUFFIXES or not path.is_file():
        return None
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))
        if tuple(image.shape[:3]) != tuple(geometry.shape):
            return None
        own = geometry_from_affine(_millimetres(image.affine, image.header), image.shape[:3])
    except Exception:  # an unreadable source only loses the header's extras
        return None
    close = all(np.allclose(a, b, rtol=1e-5, atol=1e-4) for a, b in (
        (own.spacing, geometry.spacing), (own.origin, geometry.origin),
        (own.direction, geometry.direction)))
    return image.header if close else None


def _millimetres(affine: np.ndarray, header: Any) -> np.ndarray:
    """A NIfTI affine in millimetres: metre and micron files scaled, as ITK reads them
    (unknown units count as millimetres)."""
    units = getattr(header, "get_xyzt_units", None)
    unit = units()[0] if units is not None else "unknown"
    scale = {"meter": 1000.0, "micron": 1e-3}.get(unit, 1.0)
    out = np.array(affine, dtype=np.float64)
    out[:3, :] *= scale
    return out


def affine_from_geometry(geometry: Geometry) -> np.ndarray:
    """NIfTI (RAS) 4x4 affine of an ITK (LPS) geometry."""
    lps = np.eye(4)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(geometry.spacing, dtype=float)[None, :]
    lps[:3, 3] = geometry.origin
    return _LPS_FROM_RAS @ lps


def geometry_from_affine(affine: np.ndarray, shape: tuple[int, ...]) -> Geometry:
    """ITK (LPS) geometry of a NIfTI (RAS) affine."""
    lps = _LPS_FROM_RAS @ np.asarray(affine, dtype=float)
    if not np.isfinite(lps[:3, :]).all():
        raise DataError("the affine holds NaN or infinite values")
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise DataError("degenerate affine: a voxel axis has zero length")
    direction = columns / spacing[None, :]
    if abs(np.linalg.det(direction)) < 1e-3:  # unit columns: 1 when orthogonal
        raise DataError("degenerate affine: its voxel axes are (nearly) parallel")
    return Geometry(
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3])),
        direction=tuple(float(v) for v in direction.reshape(-1)),
    )


def _squeeze_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {array.shape}")
    return array


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    plain = read_plain_nifti(path)  # most files: the same array and affine, without nibabel
    if plain is not None:
        array, affine = plain
    else:
        import nibabel as nib

        image: Any = nib.load(str(path))
        array, affine = np.asanyarray(image.dataobj), _millimetres(image.affine, image.header)
    array = _squeeze_3d(array, path)
    try:
        return array, geometry_from_affine(affine, array.shape)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def _read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    sitk = _simpleitk()
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise DataError(f"{path}: no DICOM series found")
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise DataError(f"{path}: expected a scalar 3D volume")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    geometry = Geometry(
        shape=(int(array.shape[0]), int(array.shape[1]), int(array.shape[2])),
        spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
    )
    return np.ascontiguousarray(array), geometry


def _simpleitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise MissingExtraError(
            "SimpleITK is needed for NRRD, MHA and DICOM files: pip install SimpleITK"
        ) from exc
    return sitk
