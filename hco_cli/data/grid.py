"""Whether two volumes lie on one voxel grid: a label on its image, a channel on channel 0.

Tolerances: spacing relative 1e-3, origin 0.01 mm, direction cosines 1e-3 (headers written by
different tools round differently; a real mismatch is far larger).

Geometries are held in ITK's LPS convention (:mod:`hco_cli.data.dataset`); errors show origins
and directions in the NIfTI/RAS convention (x and y negated), as nibabel and the NIfTI header
show them, and say so.
"""

from __future__ import annotations

import numpy as np

from hco_cli.data.dataset import Geometry
from hco_cli.errors import DataError

SPACING_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-3


def check_same_grid(
    image_geometry: Geometry, label_geometry: Geometry, *, case: str, image: str, label: str,
    what: str = "label", against: str = "image",
) -> None:
    """Refuse a label whose voxel grid differs from its image's (or, with ``what`` and
    ``against`` naming them, any volume whose grid differs from a reference volume's)."""
    if image_geometry.shape != label_geometry.shape:
        raise DataError(
            f"case {case}: {what} {label} has shape {label_geometry.shape} but {against} "
            f"{image} has shape {image_geometry.shape}"
        )
    checks = (
        ("spacing", np.allclose(image_geometry.spacing, label_geometry.spacing,
                                rtol=SPACING_RTOL, atol=0.0)),
        ("origin", np.allclose(image_geometry.origin, label_geometry.origin,
                               rtol=0.0, atol=ORIGIN_ATOL_MM)),
        ("direction", np.allclose(image_geometry.direction, label_geometry.direction,
                                  rtol=0.0, atol=DIRECTION_ATOL)),
    )
    for name, same in checks:
        if not same:
            got, want = getattr(label_geometry, name), getattr(image_geometry, name)
            shown = {"spacing": "spacing", "origin": "origin (RAS, mm)",
                     "direction": "direction (RAS)"}[name]
            raise DataError(
                f"case {case}: {what} {label} has {shown} {_fmt(_ras(name, got))} but "
                f"{against} {image} has {_fmt(_ras(name, want))}"
            )


def _ras(name: str, values: tuple[float, ...]) -> tuple[float, ...]:
    """An LPS origin or row-major direction matrix in RAS (x and y rows negated); a spacing
    unchanged."""
    if name == "origin":
        return (-values[0], -values[1], values[2])
    if name == "direction":
        return tuple(-v if i < 6 else v for i, v in enumerate(values))
    return values


def _fmt(values: tuple[float, ...]) -> str:
    # + 0.0 turns -0.0 (a negated zero) into 0, as the header shows it
    return "(" + ", ".join(f"{v + 0.0:.4g}" for v in values) + ")"
