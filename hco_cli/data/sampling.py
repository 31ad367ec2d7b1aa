"""Patch sampling for training: two-stream batches of augmented random crops, drawn in torch.

The volumes live on one device (CPU, or the GPU for a GPU-resident dataset) and every random
number comes from one CPU ``torch.Generator``, so a batch costs no host synchronisation and the
sampler's whole state (generator + stream positions) fits in a checkpoint for exact resumes.

BCP's transform is rot90 in the x-y plane, a flip on axis 0 or 1, then a random crop with zero
padding (``RandomRotFlip`` -> ``RandomCrop``). Rotating a whole volume only to keep one patch is
wasteful, so the crop box is drawn in the transformed frame (exactly as BCP draws it), mapped
back to the original frame, cut there and only the patch is rotated and flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from hco_cli.data.batch import Batch
from hco_cli.data.dataset import PreparedDataset
from hco_cli.errors import DataError

Augment = Literal["bcp", "flip", "none"]
Crop = Literal["random", "center"]
Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Transform:
    """A rot90 (k quarter turns in the x-y plane) followed by flips of the listed axes."""

    k: int = 0
    flips: tuple[int, ...] = ()

    def apply(self, array: Tensor) -> Tensor:
        """Apply to the last three dims of ``array`` (as ``np.rot90`` then ``np.flip``)."""
        ndim = array.dim()
        out = torch.rot90(array, self.k, dims=(ndim - 3, ndim - 2)) if self.k % 4 else array
        if self.flips:
            out = torch.flip(out, dims=[ndim - 3 + a for a in self.flips])
        return out

    def source_axes(self) -> list[tuple[int, bool]]:
        """For each output axis: the input axis it comes from and whether it runs backwards."""
        # torch.rot90(x, 1, (0, 1)) is x.flip(1).transpose(0, 1); k=2 reverses both axes;
        # k=3 is x.transpose(0, 1).flip(1).
        table = {
            0: [(0, False), (1, False)],
            1: [(1, True), (0, False)],
            2: [(0, True), (1, True)],
            3: [(1, False), (0, True)],
        }
        axes = [*table[self.k % 4], (2, False)]
        return [(src, rev != (out in self.flips)) for out, (src, rev) in enumerate(axes)]


def padding(shape: Sequence[int], patch: Sequence[int]) -> list[int]:
    """Zero padding per side, as BCP's RandomCrop: (p - d) // 2 + 3 where d <= p, else 0."""
    return [(p - d) // 2 + 3 if d <= p else 0 for d, p in zip(shape, patch, strict=True)]


def extract_patch(
    volume: Tensor, transform: Transform, offset: Sequence[int], patch: Shape3
) -> Tensor:
    """The patch at ``offset`` of the transformed, zero-padded ``volume`` (..., X, Y, Z).

    Equal to ``pad(transform(volume))[..., box]`` with BCP's symmetric padding, but only the
    patch is copied and transformed.
    """
    shape = volume.shape[-3:]
    sources = transform.source_axes()
    src_patch = [0, 0, 0]
    src_start = [0, 0, 0]
    for out_axis, (axis, reverse) in enumerate(sources):
        p = patch[out_axis]
        pad = padding([shape[axis]], [p])[0]
        padded = shape[axis] + 2 * pad
        start = padded - p - offset[out_axis] if reverse else offset[out_axis]
        src_patch[axis] = p
        src_start[axis] = start - pad  # may be negative: the patch overlaps the padding
    region = volume.new_zeros((*volume.shape[:-3], *src_patch))
    src_idx: list[slice] = []
    dst_idx: list[slice] = []
    for axis in range(3):
        lo = max(src_start[axis], 0)
        hi = min(src_start[axis] + src_patch[axis], shape[axis])
        src_idx.append(slice(lo, hi))
        dst_idx.append(slice(lo - src_start[axis], hi - src_start[axis]))
    dst: tuple[Any, ...] = (..., *dst_idx)
    src: tuple[Any, ...] = (..., *src_idx)
    region[dst] = volume[src]
    return transform.apply(region)


class PatchSampler:
    """Two-stream batch source: BCP's TwoStreamBatchSampler plus its augmentation, in torch.

    Labeled cases are visited in epochs (one permutation cut into groups of
    ``labeled_batch_size``, the incomplete last group dropped); unlabeled cases come from an
    endless stream of permutations.
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        *,
        labeled: Sequence[str],
        unlabeled: Sequence[str],
        patch_size: Shape3,
        labeled_batch_size: int,
        unlabeled_batch_size: int,
        augment: Augment,
        seed: int,
        unlabeled_crop: Crop = "random",
        device: torch.device | str = "cpu",
    ) -> None:
        if len(labeled) < labeled_batch_size:
            raise DataError(
                f"{len(labeled)} labeled case(s) cannot fill a labeled batch of "
                f"{labeled_batch_size}; lower data.labeled_batch_size"
            )
        if unlabeled_batch_size > 0 and len(unlabeled) == 0:
            raise DataError(
                f"{dataset.root}: no unlabeled cases for an unlabeled batch of "
                f"{unlabeled_batch_size}; set data.unlabeled_batch_size to 0 or pick a fold"
            )
        self.device = torch.device(device)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.labeled_batch_size = labeled_batch_size
        self.unlabeled_batch_size = unlabeled_batch_size
        self.augment: Augment = augment
        self.unlabeled_crop: Crop = unlabeled_crop
        self.labeled_cases, self.unlabeled_cases = list(labeled), list(unlabeled)
        self.images = [_to_tensor(dataset.image(c), self.device) for c in labeled]
        self.labels = [_label_tensor(dataset, c, self.device) for c in labeled]
        self.unlabeled_images = [_to_tensor(dataset.image(c), self.device) for c in unlabeled]
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._labeled_order: list[int] = []
        self._labeled_pos = 0
        self._unlabeled_order: list[int] = []
        self._unlabeled_pos = 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.images) // self.labeled_batch_size

    def next_batch(self, *, with_unlabeled: bool = True) -> Batch:
        """Draw the next batch; unlabeled patches only when asked and configured."""
        idx = self._next_labeled()
        pairs = [self._labeled_patch(i) for i in idx]
        batch = Batch(
            labeled_image=torch.stack([p[0] for p in pairs]),
            labeled_label=torch.stack([p[1] for p in pairs]).long(),
        )
        if with_unlabeled and self.unlabeled_batch_size > 0:
            uidx = self._next_unlabeled()
            batch.unlabeled_image = torch.stack([self._unlabeled_patch(i) for i in uidx])
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Generator state, stream positions and the cases the streams index, as tensors, ints
        and strings (weights_only-safe)."""
        return {
            "generator": self.generator.get_state(),
            "labeled_cases": list(self.labeled_cases),
            "unlabeled_cases": list(self.unlabeled_cases),
            "epoch": self.epoch,
            "labeled_order": list(self._labeled_order),
            "labeled_pos": self._labeled_pos,
            "unlabeled_order": list(self._unlabeled_order),
            "unlabeled_pos": self._unlabeled_pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved streams; refused (:class:`DataError`) where they indexed other
        cases than this sampler's: a re-prepared dataset or a changed split would otherwise go
        on drawing, silently, from the wrong cases."""
        for stream, mine in (("labeled", self.labeled_cases),
                             ("unlabeled", self.unlabeled_cases)):
            saved = state.get(f"{stream}_cases")  # absent before 2026-12-02: sizes only
            order = [int(i) for i in state[f"{stream}_order"]]
            if saved is not None and list(saved) != mine:
                raise DataError(f"the run drew its {stream} patches from "
                                f"{_difference(list(saved), mine)}; resume with the prepared "
                                f"dataset and data.* settings it started with")
            if order and max(order) >= len(mine):
                raise DataError(f"the run drew its {stream} patches from more than "
                                f"{len(mine)} cases, this dataset and config give {len(mine)}; "
                                f"resume with the prepared dataset and data.* settings it "
                                f"started with")
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self._labeled_order = [int(i) for i in state["labeled_order"]]
        self._labeled_pos = int(state["labeled_pos"])
        self._unlabeled_order = [int(i) for i in state["unlabeled_order"]]
        self._unlabeled_pos = int(state["unlabeled_pos"])

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator).item())

    def _next_labeled(self) -> list[int]:
        bs = self.labeled_batch_size
        if self._labeled_pos + bs > len(self._labeled_order) or not self._labeled_order:
            self._labeled_order = torch.randperm(len(self.images), generator=self.generator)[
                : self.batches_per_epoch * bs
            ].tolist()
            self._labeled_pos = 0
            self.epoch += 1
        out = self._labeled_order[self._labeled_pos : self._labeled_pos + bs]
        self._labeled_pos += bs
        return out

    def _next_unlabeled(self) -> list[int]:
        out = []
        for _ in range(self.unlabeled_batch_size):
            if self._unlabeled_pos >= len(self._unlabeled_order):
                n = len(self.unlabeled_images)
                self._unlabeled_order = torch.randperm(n, generator=self.generator).tolist()
                self._unlabeled_pos = 0
            out.append(self._unlabeled_order[self._unlabeled_pos])
            self._unlabeled_pos += 1
        return out

    def _draw_transform(self) -> Transform:
        if self.augment == "bcp":
            return Transform(k=self._randint(4), flips=(self._randint(2),))
        if self.augment == "flip":
            return Transform(flips=tuple(a for a in range(3) if self._randint(2)))
        return Transform()

    def _offsets(self, shape: Sequence[int], transform: Transform, crop: Crop) -> list[int]:
        out_shape = [shape[src] for src, _ in transform.source_axes()]
        pads = padding(out_shape, self.patch_size)
        room = [d + 2 * p - s for d, p, s in zip(out_shape, pads, self.patch_size, strict=True)]
        if crop == "center":
            return [r // 2 for r in room]
        # BCP draws np.random.randint(0, dim - patch): the upper bound is exclusive.
        return [self._randint(r) for r in room]

    def _labeled_patch(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.images[index], self.labels[index]
        transform = self._draw_transform()
        offset = self._offsets(image.shape[-3:], transform, "random")
        patch = self.patch_size
        return (
            extract_patch(image, transform, offset, patch),  # type: ignore[arg-type]
            extract_patch(label, transform, offset, patch),  # type: ignore[arg-type]
        )

    def _unlabeled_patch(self, index: int) -> Tensor:
        image = self.unlabeled_images[index]
        transform = self._draw_transform()
        offset = self._offsets(image.shape[-3:], transform, self.unlabeled_crop)
        return extract_patch(image, transform, offset, self.patch_size)  # type: ignore[arg-type]


def _to_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    # np.array copies out of the read-only memory map, which torch cannot wrap.
    return torch.from_numpy(np.array(array, dtype=np.float32)).to(device)


def _label_tensor(dataset: PreparedDataset, case: str, device: torch.device) -> Tensor:
    if not dataset.has_label(case):
        raise DataError(f"case {case} is in the labeled split but has no label array")
    array = dataset.label(case)
    # uint8 stays uint8; wider labels (uint16) become int32, which torch indexes everywhere.
    dtype = np.uint8 if array.dtype == np.uint8 else np.int32
    return torch.from_numpy(np.array(array, dtype=dtype)).to(device)


def _difference(saved: list[str], mine: list[str]) -> str:
    """Where two case lists part: their sizes, or the first position they disagree at."""
    if len(saved) != len(mine):
        return f"{len(saved)} cases, this dataset and config give {len(mine)}"
    i = next(i for i, (a, b) in enumerate(zip(saved, mine, strict=True)) if a != b)
    return f"{len(saved)} cases, its case {i + 1} was {saved[i]!r}, here it is {mine[i]!r}"
