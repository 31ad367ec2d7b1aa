"""Procedural 3D phantoms: a body with organ-like blobs of several classes.

Each case is an ellipsoidal "body" (label 0) holding one irregular, rotated ellipsoid per
foreground class, each with its own mean intensity, plus smooth texture, a smooth
multiplicative bias field, a random global gain/offset and Gaussian noise. A case depends
only on (seed, index, shape, classes), so a dataset is reproducible from its seed. Voxels are
1 mm isotropic. Small enough (64 x 64 x 48 by default) for a CPU demo to train in minutes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hco_cli.data.dataset import Geometry
from hco_cli.data.sources import RawCase, SourceCase, SourceListing
from hco_cli.errors import ConfigError

DEFAULT_SHAPE = (64, 64, 48)
SPACING = (1.0, 1.0, 1.0)


def list_synthetic(
    *, labeled: int = 4, unlabeled: int = 8, val: int = 0, test: int = 4, classes: int = 2,
    shape: tuple[int, int, int] = DEFAULT_SHAPE, seed: int = 0,
) -> SourceListing:
    """Describe the cases ``syn_000, syn_001, ...``: labeled, unlabeled, val, then test."""
    if labeled < 1 or min(unlabeled, val, test) < 0:
        raise ConfigError("synthetic: --labeled must be >= 1 and other counts >= 0")
    if not 1 <= classes <= 20:
        raise ConfigError(f"synthetic: --classes must be between 1 and 20, got {classes}")
    if min(shape) < 16:
        raise ConfigError(f"synthetic: --shape must be at least 16 per axis, got {shape}")
    counts = (("labeled", labeled), ("unlabeled", unlabeled), ("val", val), ("test", test))
    cases: list[SourceCase] = []
    roles: dict[str, str] = {}
    for role, count in counts:
        for _ in range(count):
            index = len(cases)
            case = f"syn_{index:03d}"
            roles[case] = role
            params = {"seed": seed, "index": index, "shape": tuple(shape), "classes": classes}
            cases.append(SourceCase(case=case, reader="synthetic", params=params,
                                    has_label=role != "unlabeled"))
    names = {0: "background", **{c: f"organ {c}" for c in range(1, classes + 1)}}
    train = [c for c, r in roles.items() if r in ("labeled", "unlabeled")]
    return SourceListing(cases=cases, source=f"synthetic:seed={seed}", classes=names,
                         modality="MR", train_order=train,
                         val=[c for c, r in roles.items() if r == "val"],
                         test=[c for c, r in roles.items() if r == "test"])


def generate_case(source: SourceCase) -> RawCase:
    """Image and label of one synthetic case (the label is dropped for unlabeled cases)."""
    p = source.params
    image, label = phantom(tuple(p["shape"]), classes=int(p["classes"]),
                           rng=np.random.default_rng([int(p["seed"]), int(p["index"])]))
    geometry = Geometry(shape=label.shape, spacing=SPACING)
    return RawCase(image=image[None], label=label if source.has_label else None,
                   geometry=geometry)


def phantom(
    shape: tuple[int, ...], *, classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: float32 image and uint8 label of ``shape``."""
    size = np.asarray(shape, dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape],
                                indexing="ij"), axis=-1)
    centre = size / 2 + rng.normal(0, 0.03, 3) * size
    body = _blob(grid, centre, size * rng.uniform(0.40, 0.47, 3), rng, roughness=0.05)
    tissue = np.where(body, rng.uniform(0.25, 0.35), 0.0).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    phase = rng.uniform(0, 2 * np.pi)
    for c in range(1, classes + 1):
        angle = phase + 2 * np.pi * c / classes + rng.normal(0, 0.2)
        offset = np.array([np.cos(angle), np.sin(angle), rng.normal(0, 0.3)]) * 0.18 * size
        radii = size * rng.uniform(0.12, 0.2, 3)
        organ = _blob(grid, centre + offset, radii, rng, roughness=0.15) & body
        label[organ] = c
        mean = 0.4 + 0.6 * c / classes + rng.normal(0, 0.04)
        tissue[organ] = mean
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 2.0)
    tissue += 0.08 * texture / max(float(texture.std()), 1e-6) * (tissue > 0)
    image = tissue * _bias_field(grid, size, rng)
    image = image * rng.uniform(0.8, 1.25) + rng.uniform(-0.1, 0.1)
    image += rng.normal(0, 0.05, shape).astype(np.float32)
    return image.astype(np.float32), label


def _blob(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray, rng: np.random.Generator,
          *, roughness: float) -> np.ndarray:
    """Randomly rotated ellipsoid whose surface is perturbed by smooth noise."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (grid - centre.astype(np.float32)) @ q.astype(np.float32)
    distance = np.sqrt(np.sum((local / radii.astype(np.float32)) ** 2, axis=-1))
    wobble = ndimage.gaussian_filter(rng.normal(0, 1, grid.shape[:3]).astype(np.float32), 4.0)
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    return distance < 1.0 + roughness * wobble


def _bias_field(grid: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial) over [-1, 1]^3 coordinates."""
    u = (grid / (size - 1).astype(np.float32)) * 2 - 1
    linear = u @ rng.normal(0, 0.15, 3).astype(np.float32)
    quadratic = (u ** 2) @ rng.normal(0, 0.1, 3).astype(np.float32)
    return np.exp(linear + quadratic).astype(np.float32)
