"""Largest connected component: scipy path, pure-torch fallback (== scipy), batches, classes."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from hco_cli.errors import ConfigError
from hco_cli.ops import components
from hco_cli.ops.components import (
    keep_largest_per_class,
    largest_connected_component,
    largest_of_labels,
    lcc_cupy,
    lcc_torch,
)

STRUCTURE_RANK = {6: 1, 18: 2, 26: 3}


def scipy_reference(volume: np.ndarray, connectivity: int) -> np.ndarray:
    """BCP's getLargestCC with scipy: label, then argmax of the histogram without background."""
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    labels, count = ndimage.label(volume, structure=structure)
    if count == 0:
        return np.zeros_like(volume, dtype=bool)
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def random_blobs(seed: int, shape: tuple[int, ...], threshold: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.0) > threshold


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_torch_fallback_equals_scipy_on_random_blobs(connectivity: int) -> None:
    for seed in range(6):
        batch = random_blobs(seed, (3, 18, 16, 12), 0.5 + 0.01 * seed)
        got = lcc_torch(torch.from_numpy(batch), connectivity=connectivity).numpy()
        for volume, result in zip(batch, got, strict=True):
            np.testing.assert_array_equal(result, scipy_reference(volume, connectivity))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_public_function_equals_scipy_for_numpy_and_tensors(connectivity: int) -> None:
    volume = random_blobs(11, (20, 18, 14), 0.5)
    ref = scipy_reference(volume, connectivity)
    out_np = largest_connected_component(volume, connectivity=connectivity)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == bool
    np.testing.assert_array_equal(out_np, ref)
    out_t = largest_connected_component(torch.from_numpy(volume), connectivity=connectivity)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.bool
    np.testing.assert_array_equal(out_t.numpy(), ref)


def test_neighbourhoods_differ_as_defined() -> None:
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[2, 2, 2] = True  # touches the cube by a corner only
    mask[3, 3, 2] = True  # edge neighbour of (2, 2, 2)
    mask[4, 4, 4] = True
    for conn, expected in ((6, 8), (18, 8), (26, 10)):
        for out in (largest_connected_component(mask, connectivity=conn),
                    lcc_torch(torch.from_numpy(mask)[None], connectivity=conn)[0].numpy()):
            assert int(out.sum()) == expected
    chain = np.zeros((4, 4, 4), dtype=bool)
    chain[0, 0, 0] = chain[1, 1, 0] = chain[2, 2, 0] = True  # edge (18) neighbours
    assert int(largest_connected_component(chain, connectivity=18).sum()) == 3
    assert int(largest_connected_component(chain, connectivity=6).sum()) == 1


def test_ties_go_to_the_first_component_in_raster_order() -> None:
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[4:6, 4:6, 4:6] = True
    mask[0:2, 0:2, 0:2] = True
    expected = np.zeros_like(mask)
    expected[0:2, 0:2, 0:2] = True
    np.testing.assert_array_equal(largest_connected_component(mask), expected)
    np.testing.assert_array_equal(lcc_torch(torch.from_numpy(mask)[None])[0].numpy(), expected)


def test_empty_and_batched_masks() -> None:
    empty = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    assert not largest_connected_component(empty).any()
    assert not lcc_torch(empty).any()
    batch = torch.from_numpy(random_blobs(3, (4, 16, 16, 8), 0.5))
    out = largest_connected_component(batch)
    assert out.shape == batch.shape
    for i in range(4):
        np.testing.assert_array_equal(out[i].numpy(), scipy_reference(batch[i].numpy(), 26))


@pytest.mark.parametrize("connectivity", [6, 26])
def test_largest_of_a_batch_labelled_at_once_equals_scipy(connectivity: int) -> None:
    """The torch half of the GPU path, on the CPU: a batch labelled by one scipy call whose
    structure joins nothing across volumes (as the CuPy call), so that the labels run 1..count
    over the whole batch; each volume's largest component, an empty volume and a tie."""
    structure = np.zeros((3, 3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    for seed in range(4):
        batch = random_blobs(seed, (5, 20, 18, 12), 0.5 + 0.01 * seed)
        batch[2] = False
        batch[4] = False
        batch[4, 0:2, 0:2, 0:2] = batch[4, 5:7, 5:7, 5:7] = True  # a tie: the first one stays
        labels, count = ndimage.label(batch, structure=structure)
        got = largest_of_labels(torch.from_numpy(labels.astype(np.int32)), count).numpy()
        for volume, result in zip(batch, got, strict=True):
            np.testing.assert_array_equal(result, scipy_reference(volume, connectivity))
        assert got[4, 0:2, 0:2, 0:2].all() and not got[4, 5:7, 5:7, 5:7].any()
    assert not largest_of_labels(torch.zeros(2, 4, 4, 4, dtype=torch.int32), 0).any()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="connectivity"):
        largest_connected_component(np.zeros((4, 4, 4), dtype=bool), connectivity=8)
    with pytest.raises(ValueError, match="shape"):
        largest_connected_component(np.zeros((4, 4), dtype=bool))


def test_backend_setting_is_checked_and_the_cpu_path_imports_no_gpu_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mask = torch.from_numpy(random_blobs(5, (12, 10, 8), 0.5))
    for name in ("auto", "triton", "cupy", "torch"):  # GPU labellings: no effect on a CPU
        monkeypatch.setenv("HCO_LCC_BACKEND", name)
        np.testing.assert_array_equal(largest_connected_component(mask).numpy(),
                                      scipy_reference(mask.numpy(), 26))
    monkeypatch.setenv("HCO_LCC_BACKEND", "cuda")
    with pytest.raises(ConfigError, match=r"HCO_LCC_BACKEND='cuda': expected one of auto, "):
        largest_connected_component(mask)
    code = ("import sys, torch\n"
            "from hco_cli.ops.components import largest_connected_component\n"
            "largest_connected_component(torch.ones(1, 3, 3, 3, dtype=torch.bool))\n"
            "print(sorted(m for m in ('triton', 'cupy') if m in sys.modules))")
    monkeypatch.delenv("HCO_LCC_BACKEND")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_keep_largest_per_class() -> None:
    labels = np.zeros((2, 10, 10, 10), dtype=np.int64)
    labels[:, 0:3, 0:3, 0:3] = 1  # big class-1 blob
    labels[:, 8:10, 8:10, 8:10] = 1  # small class-1 blob
    labels[:, 5:7, 0:2, 0:2] = 2  # small class-2 blob
    labels[:, 0:4, 6:10, 0:4] = 2  # big class-2 blob
    expected = labels.copy()
    expected[:, 8:10, 8:10, 8:10] = 0
    expected[:, 5:7, 0:2, 0:2] = 0
    np.testing.assert_array_equal(keep_largest_per_class(labels, 3), expected)
    out_t = keep_largest_per_class(torch.from_numpy(labels), 3)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), expected)


def _has_cupy() -> bool:
    try:
        import cupyx.scipy.ndimage  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_cupy(),
                    reason="needs a CUDA device and CuPy")
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cupy_batched_labelling_equals_scipy(connectivity: int) -> None:
    """One label call for the batch: components never join across volumes, ties go first."""
    for seed in range(4):
        batch = random_blobs(seed, (4, 24, 20, 16), 0.5 + 0.01 * seed)
        batch[2] = False  # an empty volume inside the batch
        batch[3, :, :, 0] = True  # touches volume 2's border only through the batch axis
        got = lcc_cupy(torch.from_numpy(batch).cuda(), connectivity).cpu().numpy()
        for volume, result in zip(batch, got, strict=True):
            np.testing.assert_array_equal(result, scipy_reference(volume, connectivity))
    tie = np.zeros((2, 6, 6, 6), dtype=bool)
    tie[:, 4:6, 4:6, 4:6] = True
    tie[:, 0:2, 0:2, 0:2] = True
    for got in (lcc_cupy(torch.from_numpy(tie).cuda(), 26).cpu().numpy(),
                largest_connected_component(torch.from_numpy(tie).cuda()).cpu().numpy()):
        assert got[:, 0:2, 0:2, 0:2].all() and not got[:, 4:6, 4:6, 4:6].any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "triton", "cupy", "torch"])
def test_every_gpu_backend_equals_scipy(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "cupy" and not _has_cupy():
        pytest.skip("CuPy is not installed")
    monkeypatch.setenv("HCO_LCC_BACKEND", backend)
    batch = random_blobs(9, (3, 24, 20, 16), 0.52)
    batch[1] = False
    got = largest_connected_component(torch.from_numpy(batch).cuda()).cpu().numpy()
    for volume, result in zip(batch, got, strict=True):
        np.testing.assert_array_equal(result, scipy_reference(volume, 26))


def test_auto_labels_without_a_triton_that_fails_and_triton_asked_for_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Triton that cannot build for the device (here a stand-in that raises): ``auto`` warns
    once and labels with the next backend from then on; ``triton`` refuses in one line."""
    calls = []

    class Broken:
        @staticmethod
        def fits(volumes: torch.Tensor) -> bool:
            return True

        @staticmethod
        def largest_component(volumes: torch.Tensor, connectivity: int) -> torch.Tensor:
            calls.append(1)
            raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(components, "_TRITON_FAILURE", [])
    monkeypatch.setattr(components.importlib, "import_module",
                        lambda name: Broken if name == "hco_cli.ops.ccl_triton" else
                        (_ for _ in ()).throw(ImportError(name)))
    batch = torch.from_numpy(random_blobs(4, (2, 12, 10, 8), 0.5))
    expected = [scipy_reference(v, 26) for v in batch.numpy()]
    with pytest.warns(RuntimeWarning, match="the Triton labelling failed .RuntimeError: no "
                      "kernel image for this device.; labelling without it from now on"):
        got = components._lcc_device(batch, 26, "auto")
    for result, ref in zip(got.numpy(), expected, strict=True):
        np.testing.assert_array_equal(result, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        components._lcc_device(batch, 26, "auto")
    assert calls == [1]
    with pytest.raises(ConfigError, match="HCO_LCC_BACKEND=triton: the Triton labelling failed"):
        components._lcc_device(batch, 26, "triton")
    monkeypatch.setattr(components, "_TRITON_FAILURE", [])
    with pytest.raises(ConfigError, match="HCO_LCC_BACKEND=triton: the Triton labelling failed"):
        components._lcc_device(batch, 26, "triton")
    with pytest.raises(ConfigError, match="HCO_LCC_BACKEND=cupy: CuPy is not installed"):
        components._lcc_device(batch, 26, "cupy")


def test_cupy_gets_torchs_current_stream_by_the_protocol_or_by_handle(monkeypatch) -> None:
    from types import SimpleNamespace

    from hco_cli.ops import components

    torch_stream = SimpleNamespace(cuda_stream=1234)
    monkeypatch.setattr(components.torch.cuda, "current_stream", lambda device: torch_stream)
    seen: list[tuple] = []

    class WithProtocol:
        @staticmethod
        def from_external(obj):
            seen.append(("from_external", obj))
            return "protocol"

    class Before:  # a CuPy without Stream.from_external
        pass

    def external(ptr, device_id):
        seen.append(("ExternalStream", ptr, device_id))
        return "handle"

    device = torch.device("cuda", 1)
    for stream_class in (WithProtocol, Before):
        cupy = SimpleNamespace(cuda=SimpleNamespace(Stream=stream_class, ExternalStream=external))
        components._cupy_stream(cupy, device)
    assert seen == [("from_external", torch_stream), ("ExternalStream", 1234, 1)]
