"""A synthetic thick-slice dataset made in the tests: 0.8 x 0.8 x 6 mm, 12 slices.

Each case is an ellipsoid "organ" (label 1) in a noisy body, its in-plane size varying a
little between cases, written as NIfTI with a diagonal affine and prepared at native spacing.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from hco_cli.data.prepare import PrepareSummary, SplitOptions, prepare_generic

SPACING = (0.8, 0.8, 6.0)
SLICES = 12


def write_scans(root: Path, *, cases: int = 8, seed: int = 0, contrast: float = 80.0) -> Path:
    """NIfTI images and labels under ``root/images`` and ``root/labels``; the organ is
    ``contrast`` brighter than the body (noise standard deviation 20)."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    for i in range(cases):
        shape = (int(rng.integers(64, 76)), int(rng.integers(64, 76)), SLICES)
        grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING, strict=True)],
                           indexing="ij")
        centre = [n * s / 2 + rng.uniform(-4, 4) for n, s in zip(shape, SPACING, strict=True)]
        radii = (rng.uniform(12, 18), rng.uniform(12, 18), rng.uniform(15, 24))
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
        image = 100 + 20 * rng.standard_normal(shape) + contrast * inside
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine),
                 str(root / "images" / f"case{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(inside.astype(np.uint8), affine),
                 str(root / "labels" / f"case{i:02d}.nii.gz"))
    return root


def prepare(raw: Path, out: Path, *, test: int = 2, labeled: int = 2) -> PrepareSummary:
    """The prepared dataset (native spacing, z-scored) with ``test`` test cases."""
    return prepare_generic(out, root=raw, images="images/*.nii.gz", labels="labels/*.nii.gz",
                           split=SplitOptions(test=test, labeled=labeled, val=1))
