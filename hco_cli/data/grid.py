"""Whether two volumes lie on one voxel grid: a label on its image, a channel on channel 0.

Tolerances: spacing relative 1e-3, origin 0.01 mm, direction cosines 1e-3 (headers written by
different tools round differently; a real mismatch is far larger).
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
            raise DataError(
                f"case {case}: {what} {label} has {name} {_fmt(got)} but {against} {image} "
                f"has {name} {_fmt(want)}"
            )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
