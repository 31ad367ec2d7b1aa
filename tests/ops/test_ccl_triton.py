"""The Triton union-find labelling (hco_cli/ops/ccl_triton.py) against scipy.

The CPU tests run the kernels through Triton's interpreter in one child process (this file run
as a script with TRITON_INTERPRET=1, which must be set before the kernels are defined); the
parent compares with scipy. The interpreter runs the programs one after another, so the GPU
tests, where they run concurrently and the atomics race, check the same on CUDA at BCP's batch
size; the ahead-of-time compile checks on a CPU that the kernels build for an H100.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

HAS_TRITON = find_spec("triton") is not None
RANK = {6: 1, 18: 2, 26: 3}
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def blobs(seed: int, shape: tuple[int, ...], threshold: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = (0,) + (1.0,) * 3 if len(shape) == 4 else 1.0
    return ndimage.gaussian_filter(rng.random(shape), sigma) > threshold


def serpentine(shape: tuple[int, int, int]) -> np.ndarray:
    """One path through the whole volume, rows joined alternately at either end: the longest
    chains a union-find can meet, its first voxel at the far end of the raster order's last row."""
    mask = np.zeros(shape, dtype=bool)
    for x in range(0, shape[0], 2):
        mask[x, ::2, :] = True
        for y in range(0, shape[1] - 2, 2):
            mask[x, y + 1, -1 if (y // 2) % 2 == 0 else 0] = True
        if x + 2 < shape[0]:
            last = mask[x].nonzero()
            mask[x + 1, last[0][-1], last[1][-1]] = True
    return mask[None]


def cases() -> dict[str, tuple[np.ndarray, int]]:
    """(batch, connectivity) for every case; the tie and the batch-edge cases included."""
    out: dict[str, tuple[np.ndarray, int]] = {}
    for connectivity in (6, 18, 26):
        batch = blobs(connectivity, (3, 7, 6, 5), 0.56)  # 2-6 components per volume
        batch[1] = False  # an empty volume between two others
        batch[2, :, :, 0] = True  # volume 2's first face, next to volume 1 in memory
        out[f"blobs-{connectivity}"] = batch, connectivity
        density = {6: 0.3, 18: 0.2, 26: 0.12}[connectivity]  # 3-15 components per volume
        noise = np.random.default_rng(connectivity).random((2, 5, 6, 4)) < density
        out[f"noise-{connectivity}"] = noise, connectivity
    tie = np.zeros((2, 6, 6, 6), dtype=bool)
    tie[:, 4:6, 4:6, 4:6] = tie[:, 0:2, 0:2, 0:2] = True
    out["tie"] = tie, 26
    out["serpentine"] = serpentine((5, 7, 6)), 6
    out["full"] = np.ones((2, 3, 4, 5), dtype=bool), 26
    return out


def expected(batch: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy's answer: the largest component per volume (ties: the lowest label, which scipy
    gives the component met first in raster order), and every foreground voxel's component's
    first flat index over the batch (background: its own index)."""
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    largest = np.zeros_like(batch)
    first = np.arange(batch.size).reshape(batch.shape)
    for i, volume in enumerate(batch):
        labels, count = ndimage.label(volume, structure=structure)
        if count:
            largest[i] = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
            flat = labels.ravel()
            starts = np.full(count + 1, -1)
            order = np.flatnonzero(flat)[::-1]  # the last write per label is its first voxel
            starts[flat[order]] = order
            first[i][volume] = starts[labels[volume]] + i * volume.size
    return largest, first


def run(batch: np.ndarray, connectivity: int, device: str) -> dict[str, np.ndarray]:
    from hco_cli.ops import ccl_triton

    volumes = torch.from_numpy(batch).to(device)
    parent, sizes = ccl_triton.roots(volumes, connectivity)
    largest = ccl_triton.largest_component(volumes, connectivity)
    return {"roots": parent.cpu().numpy().reshape(batch.shape),
            "sizes": sizes.cpu().numpy().reshape(batch.shape),
            "largest": largest.cpu().numpy()}


def check(batch: np.ndarray, connectivity: int, got: dict[str, np.ndarray]) -> None:
    largest, first = expected(batch, connectivity)
    np.testing.assert_array_equal(got["largest"], largest)
    np.testing.assert_array_equal(got["roots"][batch], first[batch])
    counts = np.bincount(first[batch], minlength=batch.size)
    np.testing.assert_array_equal(got["sizes"].ravel(), counts)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("ccl") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(torch.load(out, weights_only=False))


@pytest.mark.parametrize("key", list(cases()))
def test_interpreted_kernels_equal_scipy(key: str,
                                         interpreted: dict[str, dict[str, np.ndarray]]) -> None:
    batch, connectivity = cases()[key]
    check(batch, connectivity, interpreted[key])


def test_serpentine_is_one_component_as_built() -> None:
    mask = serpentine((5, 7, 6))[0]
    assert ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))[1] == 1
    assert mask.sum() > mask.size // 3


def test_kernels_compile_for_an_h100() -> None:
    """Both kernels build for sm_90 without a GPU (Triton's bundled ptxas): the union's
    atomic minimum and the size counts' atomic add are in the code, the loads bypass L1."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hco_cli.ops import ccl_triton as ct
    if not isinstance(ct._merge_kernel, triton.runtime.JITFunction):
        pytest.skip("this session runs Triton's interpreter")
    ptx = {}
    for name, kernel, consts in (
            ("merge", ct._merge_kernel, {"RANK": 3, "BLOCK": ct.BLOCK}),
            ("flatten", ct._flatten_kernel, {"BLOCK": ct.BLOCK})):
        signature = {a: "constexpr" if a in consts else "*u8" if a == "fg_ptr"
                     else "*i32" if a.endswith("_ptr") else "i32" for a in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options=dict(ct.LAUNCH))
        ptx[name] = compiled.asm["ptx"]
    assert "atom.global" in ptx["merge"] and ".min" in ptx["merge"]
    assert "ld.global.cg" in ptx["merge"] and "ld.global.cg" in ptx["flatten"]
    assert "red.global" in ptx["flatten"] or "atom.global" in ptx["flatten"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cuda_equals_scipy_at_bcp_size(connectivity: int) -> None:
    """BCP's unlabeled batch (4 x 112 x 112 x 80): blobs as pseudo-labels look, and noise near
    the percolation threshold (long, branched components, where unions race most), each three
    times, as races differ between runs; then the small cases."""
    batches = [blobs(0, (4, 112, 112, 80), 0.5),
               np.random.default_rng(1).random((4, 112, 112, 80)) < (0.32, 0.2, 0.1)[
                   (6, 18, 26).index(connectivity)]]
    for batch in batches:
        for _ in range(3):
            check(batch, connectivity, run(batch, connectivity, "cuda"))
    for batch, conn in cases().values():
        if conn == connectivity:
            check(batch, conn, run(batch, conn, "cuda"))


def _child(out: Path) -> None:
    torch.save({key: run(batch, conn, "cpu") for key, (batch, conn) in cases().items()}, out)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
