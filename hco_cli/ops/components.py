"""Largest-connected-component filtering of binary and multi-class segmentations.

CPU tensors and NumPy arrays go through ``scipy.ndimage.label``; CUDA tensors through the
Triton union-find of ``hco_cli.ops.ccl_triton`` when Triton is importable (no host
synchronisation), else ``cupyx.scipy.ndimage.label`` when CuPy is (shared memory through DLPack;
one synchronisation for the component count), else a pure-torch label propagation
(``HCO_LCC_BACKEND=triton|cupy|torch`` picks one, refusing in one line where it is missing).
All give the same result: the component with the
most voxels, ties going to the component that comes first in C (raster) order, as scipy's
label numbering (and BCP's ``getLargestCC``: argmax of the label histogram) does. An empty mask
stays empty.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from hco_cli.errors import ConfigError

ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)

# scipy.ndimage.generate_binary_structure(3, rank) gives 6-, 18- and 26-connectivity.
_RANK = {6: 1, 18: 2, 26: 3}
_CHECK_EVERY = 8  # propagation steps between convergence checks (each check syncs the device)
BACKEND_ENV = "HCO_LCC_BACKEND"
BACKENDS = ("auto", "triton", "cupy", "torch")
_TRITON_FAILURE: list[str] = []  # why Triton failed on this process's device, once it has


def largest_connected_component(mask: ArrayT, *, connectivity: int = 26) -> ArrayT:
    """Keep the largest connected component of each (X, Y, Z) volume of a boolean mask.

    ``mask`` is (X, Y, Z) or a batch (B, X, Y, Z), a torch tensor on any device or a NumPy
    array; the result has the same type, shape and device, with dtype bool.
    """
    if connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26 (got {connectivity})")
    if mask.ndim not in (3, 4):
        raise ValueError(
            f"expected a (X, Y, Z) or (B, X, Y, Z) mask, got shape {tuple(mask.shape)}")
    if isinstance(mask, np.ndarray):
        return lcc_numpy(mask.astype(bool, copy=False), connectivity)
    volumes = mask.bool().reshape(-1, *mask.shape[-3:])
    backend = gpu_backend()  # read on every call for a tensor: a typo fails on a CPU too
    if volumes.device.type == "cpu":
        out = torch.from_numpy(lcc_numpy(volumes.numpy(), connectivity))
    else:
        out = _lcc_device(volumes, connectivity, backend)
    return out.reshape(mask.shape)


def gpu_backend() -> str:
    """The labelling of GPU batches that ``HCO_LCC_BACKEND`` asks for (default ``auto``: Triton,
    else CuPy, else torch; all give scipy's result, so the setting changes speed only)."""
    name = os.environ.get(BACKEND_ENV, "auto")
    if name not in BACKENDS:
        raise ConfigError(f"{BACKEND_ENV}={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _lcc_device(volumes: Tensor, connectivity: int, backend: str) -> Tensor:
    """A GPU batch's largest components by ``backend``. ``auto`` never fails for want of
    Triton: where it is missing, cannot run on the device or fails there (once: a warning, and
    the process labels without it from then on), CuPy or torch label instead."""
    if backend in ("auto", "triton"):
        ccl, why = _ccl_triton(volumes)
        if ccl is not None:
            try:
                return ccl.largest_component(volumes, connectivity)
            except Exception as exc:  # a Triton that cannot build or launch for this device
                why = f"the Triton labelling failed ({type(exc).__name__}: {exc})"
                if backend == "triton":
                    raise ConfigError(f"{BACKEND_ENV}=triton: {why}") from exc
                _TRITON_FAILURE.append(why)
                warnings.warn(f"{why}; labelling without it from now on", RuntimeWarning,
                              stacklevel=3)
        elif backend == "triton":
            raise ConfigError(f"{BACKEND_ENV}=triton: {why}")
    if backend in ("auto", "cupy"):
        if _cupy_ndimage() is not None:
            return lcc_cupy(volumes, connectivity)
        if backend == "cupy":
            raise ConfigError(f"{BACKEND_ENV}=cupy: CuPy is not installed")
    return lcc_torch(volumes, connectivity=connectivity)


def keep_largest_per_class(labels: ArrayT, num_classes: int, *, connectivity: int = 26) -> ArrayT:
    """For every foreground class of an argmax map, keep only its largest component.

    Voxels of a class outside that component become background (0). Works on (X, Y, Z) or
    (B, X, Y, Z) integer maps, torch or NumPy.
    """
    result = labels
    for c in range(1, num_classes):
        cls = labels == c
        drop = cls & ~largest_connected_component(cls, connectivity=connectivity)
        # where() rather than boolean indexing, which would synchronise a CUDA device.
        if isinstance(result, np.ndarray):
            result = np.where(drop, 0, result).astype(labels.dtype, copy=False)
        else:
            result = torch.where(drop, torch.zeros_like(result), result)
    return result


def lcc_numpy(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """The largest component of each (X, Y, Z) volume of ``mask`` by scipy's labelling (the
    reference every other backend is tested against)."""
    structure = ndimage.generate_binary_structure(3, _RANK[connectivity])
    volumes = mask.reshape(-1, *mask.shape[-3:])
    out = np.zeros(volumes.shape, dtype=bool)
    for i, volume in enumerate(volumes):
        labels, count = ndimage.label(volume, structure=structure)
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            out[i] = labels == int(np.argmax(sizes))
    return out.reshape(mask.shape)


def _ccl_triton(volumes: Tensor) -> tuple[Any | None, str]:
    """The Triton labelling module for ``volumes``, or None and why it cannot label them."""
    if _TRITON_FAILURE:
        return None, _TRITON_FAILURE[0]
    if volumes.device.type == "cuda" and torch.cuda.get_device_capability(volumes.device) < (7, 0):
        return None, "Triton needs a GPU of compute capability 7.0 or more"
    try:
        module = importlib.import_module("hco_cli.ops.ccl_triton")
    except ImportError:
        return None, "Triton is not installed"
    except Exception as exc:  # a broken install: say so, never fail by default
        return None, f"Triton could not be imported ({type(exc).__name__}: {exc})"
    if not module.fits(volumes):
        return None, f"a batch of {volumes.numel()} voxels is past its int32 labels"
    return module, ""


def _cupy_ndimage() -> Any | None:
    try:
        return importlib.import_module("cupyx.scipy.ndimage")
    except ImportError:
        return None


def lcc_cupy(volumes: Tensor, connectivity: int) -> Tensor:
    """CuPy's scipy-compatible labelling of the whole batch at once, then torch on the labels.

    One ``label`` call labels the (B, X, Y, Z) batch with a structure that connects nothing
    across volumes, so the only host synchronisation is the component count it returns; the
    sizes (a histogram over the known label range), the per-volume argmax and the selection
    stay on the device, on the current stream.
    """
    cupy = importlib.import_module("cupy")
    cnd = importlib.import_module("cupyx.scipy.ndimage")
    with cupy.cuda.Device(volumes.device.index), _cupy_stream(cupy, volumes.device):
        structure = cupy.asarray(_batch_structure(connectivity))
        labels, count = cnd.label(cupy.from_dlpack(volumes.to(torch.uint8).contiguous()),
                                  structure)
        labels = torch.from_dlpack(labels)
    return largest_of_labels(labels, int(count))


def _cupy_stream(cupy: Any, device: torch.device) -> Any:
    """torch's current stream on ``device`` as a CuPy stream: through the CUDA stream protocol
    (``Stream.from_external``; torch's streams implement ``__cuda_stream__``), or by its handle
    where CuPy predates it (``ExternalStream``, which newer CuPy deprecates)."""
    stream = torch.cuda.current_stream(device)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device.index)


def largest_of_labels(labels: Tensor, count: int) -> Tensor:
    """The largest component of each volume of a (B, X, Y, Z) batch labelled 1..``count``
    (0: background), as a boolean batch; ties go to the lowest (raster-first) label.

    The sizes are a histogram over labels 1..count only: values outside its range are not
    counted, so the background (most voxels, which would all contend for one bin) costs no
    atomic add on a GPU. Nothing waits for the device.
    """
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    if count == 0:
        return out
    exact = torch.float32 if count < 2**24 else torch.float64  # labels as exact bin values
    for i in range(labels.shape[0]):
        sizes = torch.histc(labels[i].to(exact), bins=count, min=0.5, max=count + 0.5)
        best = sizes.argmax()  # the first maximum: ties go to the lowest (raster-first) label
        out[i] = (labels[i] == best + 1) & (sizes[best] > 0)
    return out


def _batch_structure(connectivity: int) -> np.ndarray:
    """A (3, 3, 3, 3) structure: the 3-D neighbourhood, with no link between batch entries."""
    structure = np.zeros((3, 3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(3, _RANK[connectivity])
    return structure


def lcc_torch(volumes: Tensor, *, connectivity: int = 26) -> Tensor:
    """Pure-torch LCC of a (B, X, Y, Z) boolean batch by max-pooling label propagation.

    Every foreground voxel starts with label N - (raster index), so after propagation to a fixed
    point each component carries N - (its first voxel's index): the largest label is the
    earliest component, which breaks size ties as scipy does. Pointer jumping between the
    neighbour steps makes long, thin components converge in few iterations.
    """
    b, n = volumes.shape[0], volumes[0].numel()
    dtype = torch.float32 if n < 2**24 else torch.float64  # labels must be exact integers
    fg = volumes.unsqueeze(1)
    seeds = torch.arange(n, 0, -1, device=volumes.device, dtype=dtype).reshape(volumes.shape[1:])
    labels = torch.where(fg, seeds, torch.zeros((), dtype=dtype, device=volumes.device))
    while True:
        previous = labels
        for _ in range(_CHECK_EVERY):
            labels = torch.where(fg, _neighbour_max(labels, connectivity), labels)
            labels = _pointer_jump(labels, fg, n)
        if torch.equal(previous, labels):
            break
    ids = labels.reshape(b, n).long()
    counts = torch.zeros(b, n + 1, dtype=torch.long, device=volumes.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))
    counts[:, 0] = 0
    columns = torch.arange(n + 1, device=volumes.device)
    best = (counts * (n + 1) + columns).argmax(dim=1)
    keep = (ids == best.unsqueeze(1)) & (counts.gather(1, best.unsqueeze(1)) > 0)
    return keep.reshape(volumes.shape)


def _pointer_jump(labels: Tensor, fg: Tensor, n: int) -> Tensor:
    """Take the label of the voxel a label names (label L starts at voxel n - L).

    That voxel lies in the same component and its label is at least L, so the jump keeps the
    fixed point and shortens propagation along long chains from linear to logarithmic.
    """
    flat = labels.reshape(labels.shape[0], n)
    pointer = (n - flat.long()).clamp_(0, n - 1)
    jumped = torch.maximum(flat, flat.gather(1, pointer)).reshape(labels.shape)
    return torch.where(fg, jumped, labels)


def _neighbour_max(labels: Tensor, connectivity: int) -> Tensor:
    """Max over the voxel and its neighbours: a 3x3x3 cube (26), three 3x3 planes (18) or
    three 3-voxel lines (6) through the centre."""
    if connectivity == 26:
        return F.max_pool3d(labels, kernel_size=3, stride=1, padding=1)
    if connectivity == 18:
        shapes = [(3, 3, 1), (3, 1, 3), (1, 3, 3)]
    else:
        shapes = [(3, 1, 1), (1, 3, 1), (1, 1, 3)]
    out = labels
    for k in shapes:
        pad = tuple(s // 2 for s in k)
        out = torch.maximum(out, F.max_pool3d(labels, kernel_size=k, stride=1, padding=pad))
    return out
