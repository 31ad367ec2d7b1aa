"""What ``hco predict`` writes beside the label maps: class probabilities and uncertainty.

Probabilities (``--save-probabilities``): ``CASE.npz`` (NumPy, compressed) beside
``CASE.nii.gz``, with

- ``probabilities``: float32 (K, X, Y, Z) on the scan's original grid, axes as nibabel reads
  the label map (``nib.load(CASE.nii.gz).get_fdata()``), channel k for label value
  ``label_values[k]``; the parts cropped away before the network are background (1, 0, ...);
- ``label_values`` (K,), ``class_names`` (K,) and ``affine`` (the label map's 4 x 4 NIfTI
  affine).

The averaged softmax is copied to the original grid as the labels are (nearest voxel), so
every voxel's probabilities sum to 1 and their argmax is the label map (``--lcc``
post-processes the labels only). Two classes store background as 1 - foreground, exactly the
complement the BCP rule "foreground > 0.5" thresholds, so there too the argmax (ties go to
background) is the label map, bit for bit, where a separately rounded background could tie
or win by one float step. float32, not
float16: float16 would round foreground probabilities within 2.4e-4 of 0.5 onto 0.5, where the
stored argmax would contradict the label map. NIfTI has no float16 type, and ensembling tools
(nnU-Net's among them) read arrays, so the probabilities are an array file, not an image.

Uncertainty (``--uncertainty``): ``uncertainty/CASE.nii.gz``, the predictive entropy
``-sum_k p_k log p_k / log K`` of the averaged probabilities (over windows, mirrors and runs)
as float32 in [0, 1] (0: one class is certain, 1: all classes equally likely), in the scan's
geometry, so that it opens on top of the scan in ITK-SNAP or 3D Slicer. It is written in a
subfolder so that ``hco evaluate OUT`` still finds only label maps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hco_cli.data.dataset import CaseGeometry
from hco_cli.data.io import affine_from_geometry, write_volume
from hco_cli.data.labels import LabelMap
from hco_cli.inference.resample import to_original_grid
from hco_cli.io_utils import atomic_path

UNCERTAINTY_DIR = "uncertainty"


def to_original_probabilities(probs: np.ndarray, geometry: CaseGeometry) -> np.ndarray:
    """(K, X, Y, Z) probabilities on the prepared grid -> the original grid (float32); voxels
    outside the prepared grid (cropped away) are background with probability 1."""
    prepared, original = geometry.prepared, geometry.original
    inside = to_original_grid(np.ones(prepared.shape, np.uint8), prepared=prepared,
                              original=original).astype(bool)
    out = np.empty((probs.shape[0], *original.shape), dtype=np.float32)
    for k, channel in enumerate(probs):
        out[k] = to_original_grid(np.asarray(channel, np.float32), prepared=prepared,
                                  original=original)
    out[0][~inside] = 1.0
    return out


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """``-sum_k p_k log p_k / log K`` over axis 0, in float32 (0 log 0 = 0)."""
    k = probs.shape[0]
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return (-terms.sum(axis=0) / math.log(k)).astype(np.float32) if k > 1 else (
        np.zeros(p.shape[1:], np.float32))


def write_probabilities(path: Path, probs: np.ndarray, geometry: CaseGeometry,
                        labels: LabelMap) -> None:
    """Write ``CASE.npz`` (see the module docstring) atomically."""
    if probs.shape[0] == 2:
        probs = np.stack([1.0 - probs[1], probs[1]]).astype(np.float32)
    original = to_original_probabilities(probs, geometry)
    with atomic_path(Path(path), suffix=".npz") as tmp:
        np.savez_compressed(tmp, probabilities=original,
                            label_values=np.asarray(labels.values, dtype=np.int64),
                            class_names=np.asarray(labels.names, dtype=str),
                            affine=affine_from_geometry(geometry.original))


def write_uncertainty(path: Path, probs: np.ndarray, geometry: CaseGeometry) -> None:
    """Write the normalised entropy of prepared-grid ``probs`` as NIfTI on the original grid
    (cropped-away parts are certain background: 0)."""
    entropy = normalized_entropy(probs)
    original = to_original_grid(entropy, prepared=geometry.prepared, original=geometry.original)
    write_volume(Path(path), original, geometry.original, header_of=geometry.source())
