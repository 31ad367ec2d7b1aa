"""Patch sampler: exact augmentation, crop ranges, padding, two-stream epochs, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.sampling import PatchSampler, Transform, extract_patch, padding
from hco_cli.errors import DataError


def write_prepared(root: Path, shapes: dict[str, tuple[int, int, int]], *, labeled: list[str],
                   unlabeled: list[str], val: list[str] | None = None) -> Path:
    """A minimal prepared dataset whose voxel values encode their own index (all distinct)."""
    cases = root / "cases"
    cases.mkdir(parents=True)
    info = {"name": "toy", "classes": {"0": "background", "1": "fg"}, "spacing": [1, 1, 1],
            "source": "test", "hco_version": "0"}
    (root / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    splits = {"labeled": labeled, "unlabeled": unlabeled, "val": val or [], "test": []}
    (root / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    for n, (case, shape) in enumerate(shapes.items()):
        size = int(np.prod(shape))
        image = (np.arange(size, dtype=np.float32) + 1 + 1000 * n).reshape(1, *shape)
        np.save(cases / f"{case}_image.npy", image)
        label = (np.arange(size) % 7 + 1).astype(np.uint8).reshape(shape)
        np.save(cases / f"{case}_label.npy", label)
        geom = {"shape": list(shape), "spacing": [1, 1, 1]}
        (cases / f"{case}.json").write_text(json.dumps(
            {"case": case, "prepared": geom, "original": geom}), encoding="utf-8")
    return root


def reference_patch(volume: np.ndarray, k: int, flips: tuple[int, ...], offset: list[int],
                    patch: tuple[int, int, int]) -> np.ndarray:
    """BCP's pipeline on the whole volume: np.rot90, np.flip, symmetric zero pad, crop."""
    out = np.rot90(volume, k, axes=(0, 1))
    for axis in flips:
        out = np.flip(out, axis=axis)
    pads = padding(out.shape, patch)
    out = np.pad(out, [(p, p) for p in pads])
    return out[tuple(slice(o, o + p) for o, p in zip(offset, patch, strict=True))]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flips", [(), (0,), (1,), (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("shape", [(9, 6, 5), (4, 7, 3)])
def test_extract_patch_matches_whole_volume_pipeline(k, flips, shape):
    volume = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) + 1
    patch = (5, 4, 4)
    transform = Transform(k=k, flips=flips)
    out_shape = np.rot90(volume, k, axes=(0, 1)).shape
    pads = padding(out_shape, patch)
    rng = np.random.default_rng(k)
    for _ in range(4):
        room = [d + 2 * p - s for d, p, s in zip(out_shape, pads, patch, strict=True)]
        offset = [int(rng.integers(0, r)) for r in room]
        got = extract_patch(torch.from_numpy(volume), transform, offset, patch).numpy()
        np.testing.assert_array_equal(got, reference_patch(volume, k, flips, offset, patch))


def test_transform_is_a_permutation_of_voxels():
    volume = torch.arange(6 * 4 * 3).reshape(6, 4, 3)
    for k in range(4):
        out = Transform(k=k, flips=(1,)).apply(volume)
        assert out.shape == ((4, 6, 3) if k % 2 else (6, 4, 3))
        assert torch.equal(out.flatten().sort().values, volume.flatten())


def test_padding_follows_bcp():
    assert padding((112, 100, 88), (112, 112, 80)) == [3, 9, 0]


def _sampler(root: Path, **kwargs) -> PatchSampler:
    ds = PreparedDataset(root)
    args = dict(labeled=ds.split("labeled"), unlabeled=ds.split("unlabeled"), patch_size=(6, 5, 4),
                labeled_batch_size=2, unlabeled_batch_size=2, augment="bcp", seed=3)
    args.update(kwargs)
    return PatchSampler(ds, **args)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    shapes = {"a": (10, 7, 6), "b": (8, 12, 5), "c": (6, 6, 3), "d": (9, 9, 9), "e": (7, 8, 6),
              "u1": (10, 10, 6), "u2": (5, 9, 7), "u3": (11, 6, 8)}
    return write_prepared(tmp_path / "toy", shapes, labeled=["a", "b", "c", "d", "e"],
                          unlabeled=["u1", "u2", "u3"])


def test_patches_are_crops_of_the_transformed_volume(toy):
    sampler = _sampler(toy)
    ds = PreparedDataset(toy)
    values = {c: set(ds.image(c).ravel().tolist()) for c in ds.case_ids()}
    for _ in range(10):
        batch = sampler.next_batch()
        assert batch.labeled_image.shape == (2, 1, 6, 5, 4)
        assert batch.labeled_label.shape == (2, 6, 5, 4) and batch.labeled_label.dtype == torch.long
        assert batch.unlabeled_image is not None and batch.unlabeled_image.shape == (2, 1, 6, 5, 4)
        for patch in [*batch.labeled_image, *batch.unlabeled_image]:
            voxels = patch[patch != 0].tolist()
            # every nonzero voxel comes from one single case, each at most once (a permutation)
            assert len(set(voxels)) == len(voxels)
            assert any(set(voxels) <= v for v in values.values())
        # label and image were cut and moved identically: label = (index % 7) + 1 where image != 0
        idx = (batch.labeled_image[:, 0] - 1) % 1000
        inside = batch.labeled_image[:, 0] != 0
        case_offset = torch.div(batch.labeled_image[:, 0] - 1, 1000, rounding_mode="floor") * 1000
        index = (batch.labeled_image[:, 0] - 1 - case_offset).long()
        assert torch.equal(batch.labeled_label[inside], index[inside] % 7 + 1)
        assert torch.equal(batch.labeled_label[~inside], torch.zeros_like(idx[~inside]).long())


def test_crop_offsets_cover_the_exclusive_range(toy):
    # Case "c" is 6x6x3 with a 6x5x4 patch: x and z are padded, y has 6-5 = 1 valid offset.
    ds = PreparedDataset(toy)
    sampler = PatchSampler(ds, labeled=["c"], unlabeled=[], patch_size=(6, 5, 4),
                           labeled_batch_size=1, unlabeled_batch_size=0, augment="none", seed=0)
    seen = set()
    for _ in range(60):
        patch = sampler.next_batch().labeled_image[0, 0]
        nz = patch.nonzero()
        seen.add(tuple(nz.min(0).values.tolist()))
    # x: pad 3 each side -> padded 12, offsets 0..5 -> first real voxel at 3..(-2) clipped
    xs = {s[0] for s in seen}
    assert xs == {0, 1, 2, 3}  # offsets 0..3 show the volume from x=3-o; 4,5 start inside it
    assert {s[1] for s in seen} == {0}  # only offset 0 (randint(0, 1)), never 1


def test_two_stream_epochs(toy):
    sampler = _sampler(toy, unlabeled_batch_size=2, augment="none", patch_size=(2, 2, 2))
    ds = PreparedDataset(toy)
    first_values = {float(ds.image(c)[0, 0, 0, 0]) for c in ds.split("labeled")}
    assert sampler.batches_per_epoch == 2  # 5 labeled // 2, the incomplete group dropped
    for epoch in range(1, 4):
        ids = []
        for _ in range(2):
            sampler.next_batch()
            ids += sampler._labeled_order[sampler._labeled_pos - 2 : sampler._labeled_pos]
            assert sampler.epoch == epoch
        assert len(set(ids)) == 4 and len(first_values) == 5
    # the unlabeled stream is made of whole permutations of the 3 unlabeled cases
    drawn = []
    sampler2 = _sampler(toy, unlabeled_batch_size=3, augment="none")
    for _ in range(4):
        sampler2.next_batch()
        drawn.append(sorted(sampler2._unlabeled_order))
    assert all(d == [0, 1, 2] for d in drawn)


def test_state_dict_resumes_exactly(toy):
    a = _sampler(toy)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(4)]
    b = _sampler(toy, seed=99)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        assert torch.equal(got.labeled_image, want.labeled_image)
        assert torch.equal(got.unlabeled_image, want.unlabeled_image)
    assert b.epoch == a.epoch


def test_resume_on_other_cases_is_refused(toy):
    a = _sampler(toy)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    assert state["unlabeled_cases"] == ["u1", "u2", "u3"]
    # a labeled case moved into the unlabeled pool (data.labeled_rest): one case more
    with pytest.raises(DataError, match="unlabeled patches from 3 cases, this dataset and "
                                        "config give 4"):
        _sampler(toy, unlabeled=["e", "u1", "u2", "u3"]).load_state_dict(state)
    with pytest.raises(DataError, match="its case 2 was 'b', here it is 'c'"):
        _sampler(toy, labeled=["a", "c", "b", "d", "e"]).load_state_dict(state)
    # a checkpoint from before the case lists were saved: its indices must still fit
    old = {k: v for k, v in state.items() if not k.endswith("_cases")}
    with pytest.raises(DataError, match="labeled patches from more than 2 cases"):
        _sampler(toy, labeled=["a", "b"]).load_state_dict(old)
    _sampler(toy, seed=99).load_state_dict(old)


def test_same_seed_same_batches_different_seed_differs(toy):
    a, b, c = _sampler(toy), _sampler(toy), _sampler(toy, seed=4)
    ba, bb, bc = a.next_batch(), b.next_batch(), c.next_batch()
    assert torch.equal(ba.labeled_image, bb.labeled_image)
    assert not torch.equal(ba.labeled_image, bc.labeled_image)


def test_center_crop_for_unlabeled_is_fixed(toy):
    sampler = _sampler(toy, augment="none", unlabeled_crop="center", unlabeled_batch_size=3)
    first = sampler.next_batch().unlabeled_image
    order = sampler._unlabeled_order
    by_case = {order[i]: first[i] for i in range(3)}
    second = sampler.next_batch().unlabeled_image
    for i, case in enumerate(sampler._unlabeled_order):
        assert torch.equal(second[i], by_case[case])


def test_too_few_labeled_cases_is_a_data_error(toy):
    with pytest.raises(DataError, match="labeled_batch_size"):
        _sampler(toy, labeled_batch_size=6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_resident_sampler_draws_the_same_patches(toy):
    cpu, gpu = _sampler(toy), _sampler(toy, device="cuda")
    for _ in range(3):
        a, b = cpu.next_batch(), gpu.next_batch()
        assert b.labeled_image.is_cuda
        assert torch.equal(a.labeled_image, b.labeled_image.cpu())
        assert torch.equal(a.labeled_label, b.labeled_label.cpu())
        assert torch.equal(a.unlabeled_image, b.unlabeled_image.cpu())
