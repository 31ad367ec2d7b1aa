"""Loading one listed case: an HDF5 pair, image/label volumes, or a generated phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hco_cli.data.dataset import Geometry
from hco_cli.data.grid import check_same_grid
from hco_cli.data.io import read_volume
from hco_cli.data.sources import RawCase, SourceCase
from hco_cli.data.sources.synthetic import generate_case
from hco_cli.errors import DataError


def load_case(source: SourceCase) -> RawCase:
    """Read (or generate) one case; every failure names the case and the file."""
    if source.reader == "h5":
        return _load_h5(source)
    if source.reader == "synthetic":
        return generate_case(source)
    return _load_volumes(source)


def _load_h5(source: SourceCase) -> RawCase:
    import h5py

    path = source.images[0]
    if not path.is_file():
        raise DataError(f"case {source.case}: file not found: {path}")
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in ("image", "label") if key not in handle]
            if missing:
                raise DataError(f"case {source.case}: {path} has no {missing[0]!r} dataset")
            image = np.asarray(handle["image"][()])
            label = np.asarray(handle["label"][()])
    except DataError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError on corrupt files
        raise DataError(f"case {source.case}: cannot read {path}: {exc}") from exc
    for name, array in (("image", image), ("label", label)):
        if array.ndim != 3:
            raise DataError(
                f"case {source.case}: {path} {name} has shape {array.shape}, expected 3D"
            )
    spacing = source.spacing or (1.0, 1.0, 1.0)
    geometry = Geometry(shape=_shape(image), spacing=spacing)
    label_geometry = Geometry(shape=_shape(label), spacing=spacing)
    return RawCase(image=image[None], label=label, geometry=geometry,
                   label_geometry=label_geometry)


def _load_volumes(source: SourceCase) -> RawCase:
    channels: list[np.ndarray] = []
    geometry: Geometry | None = None
    for index, path in enumerate(source.images):
        array, geo = _read(source.case, path)
        if geometry is None:
            geometry = geo
        else:  # channels are stacked voxel by voxel: their grids must be the same
            check_same_grid(geometry, geo, case=source.case, image=str(source.images[0]),
                            label=str(path), what=f"channel {index}", against="channel 0")
        channels.append(array)
    if geometry is None:
        raise DataError(f"case {source.case}: no image file")
    label, label_geometry = (None, None)
    if source.label is not None:
        label, label_geometry = _read(source.case, source.label)
    return RawCase(image=np.stack(channels), label=label, geometry=geometry,
                   label_geometry=label_geometry)


def _read(case: str, path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        return read_volume(path)
    except DataError as exc:
        raise DataError(f"case {case}: {exc}") from exc


def _shape(array: np.ndarray) -> tuple[int, int, int]:
    return (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
