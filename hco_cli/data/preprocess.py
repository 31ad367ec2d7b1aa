"""Checks and preprocessing of one case: validation, resampling, normalisation, cropping.

Order (as in CoraNet's pancreas preprocessing): check (and map label values to training
indices) → resample → crop box from the resampled raw image (or, for labeled training cases
when asked, from the label) → normalise (statistics over the whole resampled volume, as UA-MT
z-scores the whole scan) → crop and pad.

Resampling keeps the origin (the centre of voxel 0) and the direction; the new shape is
``round(shape * spacing / new_spacing)`` per axis (at least 1), so that the physical extent
is kept to within half a voxel. Voxel ``i`` of the new grid samples the old grid at index
``i * new_spacing / spacing``: linearly for images, nearest neighbour for labels, clamped at
the border.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hco_cli.data.dataset import CaseGeometry, Geometry
from hco_cli.data.grid import SPACING_RTOL, check_same_grid
from hco_cli.data.plan import CropRule, Norm, PreprocessPlan
from hco_cli.data.sources import RawCase, SourceCase
from hco_cli.errors import DataError

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
# 2**31 voxels a channel (8 GiB of float32): past any scan of this field at its target spacing
MAX_RESAMPLED_VOXELS = 2**31
# Otsu foreground components smaller than this fraction of the largest one are noise.
OTSU_MIN_COMPONENT = 0.1
_OTSU_BINS = 256


@dataclass
class PreparedCase:
    """A case ready to be written: (C, X, Y, Z) float32 image, (X, Y, Z) label or None."""

    image: np.ndarray
    label: np.ndarray | None
    geometry: CaseGeometry
    dropped_empty_label: bool = False
    # Values of the label as read, before resampling and cropping, while the label map is still
    # to be discovered: a small region that a coarse spacing loses still names its class.
    label_values: tuple[int, ...] = ()


def preprocess_case(
    source: SourceCase, raw: RawCase, plan: PreprocessPlan, *, allow_empty_label: bool,
    crop_by_label: bool = False,
) -> PreparedCase:
    """Check and transform one loaded case; errors name the case and the file.

    Labels become training indices when ``plan.labels`` is known (otherwise they keep their
    values, to be mapped once every case is seen). The crop box comes from the image
    (``plan.crop``), or from the label with ``crop_by_label`` (labeled training cases only).
    """
    image_path = str(source.images[0].absolute()) if source.images else None
    label_path = str(source.label.absolute()) if source.label else image_path
    image = checked_image(raw.image, case=source.case, path=image_path or "synthetic")
    label, dropped = _checked_case_label(source, raw, plan, allow_empty_label=allow_empty_label,
                                         image_path=image_path, label_path=label_path)
    values = present_values(label) if label is not None and plan.labels is None else ()
    geometry = raw.geometry
    if plan.spacing is not None and not np.allclose(geometry.spacing, plan.spacing,
                                                    rtol=SPACING_RTOL, atol=0.0):
        check_resampled_size(geometry, plan.spacing, case=source.case,
                             path=image_path or "synthetic")
        image, new_geometry = resample(image, geometry, plan.spacing, order=1)
        if label is not None:
            label = resample(label[None], geometry, plan.spacing, order=0)[0][0]
        geometry = new_geometry
    box = None
    if crop_by_label and label is not None:
        box = crop_box(_foreground(label, plan), margin=plan.crop_margin,
                       min_size=plan.crop_min_size)
    elif plan.crop != "none":
        box = crop_box(image_mask(image, plan.crop), margin=plan.crop_margin,
                       min_size=plan.crop_min_size)
    image = normalize(image, plan.norm, window=plan.ct_window)
    if box is not None:
        image = apply_box(image, box, fill=image.reshape(image.shape[0], -1).min(axis=1))
        if label is not None:
            label = apply_box(label[None], box, fill=np.zeros(1))[0]
        geometry = cropped_geometry(geometry, box)
    case_geometry = CaseGeometry(
        case=source.case, prepared=geometry, original=raw.geometry, crop=box,
        source_image=image_path, source_label=label_path if source.label else None,
    )
    return PreparedCase(image=np.ascontiguousarray(image, dtype=np.float32),
                        label=label, geometry=case_geometry, dropped_empty_label=dropped,
                        label_values=values)


def present_values(label: np.ndarray) -> tuple[int, ...]:
    """The values that occur in a checked (non-negative integer) label, increasing."""
    return tuple(int(v) for v in np.flatnonzero(np.bincount(label.ravel())))


def _checked_case_label(
    source: SourceCase, raw: RawCase, plan: PreprocessPlan, *, allow_empty_label: bool,
    image_path: str | None, label_path: str | None,
) -> tuple[np.ndarray | None, bool]:
    """The checked (and, with a known map, indexed) label; None and True when dropped."""
    if raw.label is None:
        return None, False
    where = label_path or "synthetic"
    allowed = plan.labels.allowed() if plan.labels is not None else None
    label = checked_label(raw.label, case=source.case, path=where, allowed=allowed)
    check_same_grid(raw.geometry, raw.label_geometry or raw.geometry, case=source.case,
                    image=image_path or "synthetic", label=where)
    if plan.labels is not None and not plan.labels.is_identity:
        label = plan.labels.to_indices(label)
    if not _foreground(label, plan).any():
        if not allow_empty_label:
            raise DataError(
                f"case {source.case}: label {where} is empty (no foreground voxel); "
                "empty labels are allowed only for unlabeled cases"
            )
        return None, True
    return label, False


def _foreground(label: np.ndarray, plan: PreprocessPlan) -> np.ndarray:
    """Voxels of a class other than background (ignored voxels excluded)."""
    ignore = plan.labels.ignore_index if plan.labels is not None else plan.ignore_label
    mask = label > 0
    return mask & (label != ignore) if ignore is not None else mask


def image_mask(image: np.ndarray, rule: CropRule) -> np.ndarray:
    """Foreground of a (C, X, Y, Z) image (raw intensities) that a crop box encloses.

    ``nonzero``: voxels where any channel is non-zero (nnU-Net's rule; right for skull-stripped
    or zero-padded scans). ``otsu``: voxels above any channel's Otsu threshold, keeping the
    connected components of at least a tenth of the largest one's size (the body, not noise).
    Labels are never used, so a case is cropped the same with or without its label.
    """
    if rule == "nonzero":
        return np.asarray((image != 0).any(axis=0))
    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        mask |= channel > otsu_threshold(channel)
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = (sizes >= OTSU_MIN_COMPONENT * sizes.max())[components]
    return mask


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold over a 256-bin histogram (the maximum for a constant array): the cut
    that maximises the between-class variance."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=_OTSU_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts, dtype=np.float64)
    mass = np.cumsum(counts * centres, dtype=np.float64)
    total, total_mass = weight[-1], mass[-1]
    below = weight[:-1]
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = mass[:-1] / below
        mean_above = (total_mass - mass[:-1]) / above
        between = below * above * (mean_below - mean_above) ** 2
    between = np.where((below > 0) & (above > 0), between, -1.0)
    # Every cut in an empty stretch of the histogram scores the same: take the middle of the
    # first run of maxima, not its low end (which would hug the background's tail).
    ties = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run = ties[: int(np.argmax(np.diff(ties) > 1)) + 1] if np.any(np.diff(ties) > 1) else ties
    return float(edges[int(run[len(run) // 2]) + 1])


def checked_image(image: np.ndarray, *, case: str, path: str) -> np.ndarray:
    """The image as float32, refusing complex or non-numeric data and NaN/Inf voxels."""
    if image.dtype.kind == "c":  # a cast to float would drop the imaginary part
        raise DataError(f"case {case}: image {path} has complex type {image.dtype}; "
                        "convert it to real values (e.g. the magnitude) first")
    if image.dtype.kind not in "biuf":  # also refuses timedelta64, a numpy integer subtype
        raise DataError(f"case {case}: image {path} has non-numeric type {image.dtype}")
    out = np.asarray(image, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise DataError(
            f"case {case}: image {path} has {bad} NaN or Inf voxels (or values beyond float32)"
        )
    return out


def checked_label(
    label: np.ndarray, *, case: str, path: str, allowed: frozenset[int] | None
) -> np.ndarray:
    """The label as uint8 (uint16 above 255); refuses non-integer, negative or unknown values."""
    if not (np.issubdtype(label.dtype, np.number) or label.dtype == np.bool_):
        raise DataError(f"case {case}: label {path} has non-numeric type {label.dtype}")
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise DataError(f"case {case}: label {path} has NaN or Inf voxels")
        if not np.array_equal(label, np.round(label)):
            raise DataError(f"case {case}: label {path} has non-integer values")
    low, high = (float(label.min()), float(label.max())) if label.size else (0.0, 0.0)
    if low < 0:
        raise DataError(f"case {case}: label {path} has negative values (min {low:g})")
    if high > np.iinfo(np.uint16).max:
        raise DataError(f"case {case}: label {path} has values above 65535 (max {high:g})")
    out = label.astype(np.uint8 if high <= 255 else np.uint16)
    if allowed is not None:
        present = np.flatnonzero(np.bincount(out.ravel()))
        unknown = sorted(int(v) for v in present if int(v) not in allowed)
        if unknown:
            raise DataError(
                f"case {case}: label {path} has values {unknown} that are not classes "
                f"(expected {sorted(allowed)})"
            )
    return out


def resampled_geometry(geometry: Geometry, spacing: tuple[float, float, float]) -> Geometry:
    """Grid of the same physical extent at ``spacing`` (origin and direction kept)."""
    shape = tuple(
        max(1, round(n * old / new))
        for n, old, new in zip(geometry.shape, geometry.spacing, spacing, strict=True)
    )
    return Geometry(shape=shape, spacing=spacing, origin=geometry.origin,  # type: ignore[arg-type]
                    direction=geometry.direction)


def check_resampled_size(geometry: Geometry, spacing: tuple[float, float, float], *,
                         case: str, path: str) -> None:
    """Refuse a resampling whose grid would pass :data:`MAX_RESAMPLED_VOXELS`: a scan whose
    header gives its spacing in metres, or a wrong spacing, instead of a memory error."""
    shape = resampled_geometry(geometry, spacing).shape
    voxels = math.prod(shape)
    if voxels > MAX_RESAMPLED_VOXELS:
        raise DataError(
            f"case {case} ({path}): resampling spacing {_mm(geometry.spacing)} mm to "
            f"{_mm(spacing)} mm would make a {shape} grid of {voxels:.2e} voxels; check the "
            f"file's spacing and spatial units (NIfTI xyzt_units)")


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in spacing)


def resample(
    array: np.ndarray, geometry: Geometry, spacing: tuple[float, float, float], *, order: int
) -> tuple[np.ndarray, Geometry]:
    """Resample a (C, X, Y, Z) array to ``spacing``: ``order`` 1 for images, 0 for labels."""
    target = resampled_geometry(geometry, spacing)
    scale = np.asarray(spacing, dtype=float) / np.asarray(geometry.spacing, dtype=float)
    channels = [
        ndimage.affine_transform(channel, scale, output_shape=target.shape, order=order,
                                 mode="nearest", output=channel.dtype)
        for channel in array
    ]
    return np.stack(channels), target


def normalize(image: np.ndarray, norm: Norm, *, window: tuple[float, float]) -> np.ndarray:
    """Per-channel intensity normalisation of a (C, X, Y, Z) float32 image.

    ``zscore``: subtract the mean, divide by the standard deviation (over the whole volume;
    a constant channel is only centred). ``ct``: clip to ``window`` (HU) and map it linearly
    onto [0, 1]. ``none``: unchanged (data already normalised upstream).
    """
    if norm == "none":
        return image
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        if norm == "ct":
            low, high = window
            out[c] = (np.clip(channel, low, high) - low) / (high - low)
        else:
            mean, std = float(channel.mean(dtype=np.float64)), float(channel.std(dtype=np.float64))
            out[c] = (channel - mean) / std if std > 0 else channel - mean
    return out


def crop_box(mask: np.ndarray, *, margin: int, min_size: tuple[int, int, int] | None) -> Box:
    """Bounding box of ``mask`` grown by ``margin`` voxels, then to at least ``min_size``.

    The margin is clipped at the volume border. A box still below ``min_size`` grows about
    its centre, shifted to stay inside the volume where the volume is large enough; only an
    axis shorter than ``min_size`` extends beyond it (start < 0 or stop > shape: padding).
    An empty mask gives the whole volume.
    """
    box = []
    for axis, n in enumerate(mask.shape):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start, stop = (int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, n)
        start, stop = max(0, start - margin), min(n, stop + margin)
        want = min_size[axis] if min_size else 0
        if stop - start < want:
            start = (start + stop) // 2 - want // 2
            start = min(max(start, 0), max(n - want, 0)) if n >= want else -((want - n) // 2)
            stop = start + want
        box.append((start, stop))
    return (box[0], box[1], box[2])


def apply_box(array: np.ndarray, box: Box, *, fill: np.ndarray) -> np.ndarray:
    """Crop a (C, X, Y, Z) array to ``box``, padding with ``fill[c]`` outside the volume."""
    shape = tuple(stop - start for start, stop in box)
    out = np.empty((array.shape[0], *shape), dtype=array.dtype)
    out[...] = np.asarray(fill, dtype=array.dtype).reshape(-1, 1, 1, 1)
    src, dst = [], []
    for (start, stop), n in zip(box, array.shape[1:], strict=True):
        lo, hi = max(start, 0), min(stop, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


def cropped_geometry(geometry: Geometry, box: Box) -> Geometry:
    """Geometry of ``box`` inside ``geometry``: the origin moves to voxel ``start``."""
    start = np.asarray([b[0] for b in box], dtype=float)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(geometry.origin) + direction @ (start * np.asarray(geometry.spacing))
    return Geometry(
        shape=tuple(stop - begin for begin, stop in box),  # type: ignore[arg-type]
        spacing=geometry.spacing,
        origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=geometry.direction,
    )


