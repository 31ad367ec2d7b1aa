"""Parameters as views of one flat buffer, for the flat (fused) optimizer step.

A foreach step launches one kernel per operation over a list of tensors, but the CO/HCO masks
are normalised per tensor, which a list of 118 tensors turns into many small launches. In flat
mode the optimizer gives every parameter a view of one contiguous buffer, keeps its state and
both gradient sources in buffers of the same layout, and runs each operation of the step as a
single kernel over all parameters. The per-tensor mask means become a segmented reduction: an
integer prefix sum over the 0/1 mask read at the segment ends (exact for any mask size below
2^31), and the per-tensor factors 1/s return to the elements through one gather.

Every tensor starts on a multiple of ALIGN = 1024 elements (4 KiB in fp32), so that a block of
the fused Triton kernels (triton_step.py, BLOCK = ALIGN) never straddles two tensors and can find
its tensor in a per-block table; the padding is under 1% for the V-Net (0.9%, 118 tensors). The
gaps between tensors stay zero in every buffer and never admit a mask element. Views keep each
parameter's strides, so channels-last weights stay channels-last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hco_cli.optim.masks import MaskSpec, mask_scale

ALIGN = 1024


def flat_supported(params: Sequence[Tensor]) -> bool:
    """True when ``params`` share one device and floating dtype and each is dense in memory."""
    if not params:
        return False
    first = params[0]
    return all(p.device == first.device and p.dtype == first.dtype and p.is_floating_point()
               and _dense(p) for p in params)


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dims is contiguous (channels-last too)."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class FlatLayout:
    """Where each parameter lives in the flat buffers, and the segment bookkeeping of the masks."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        if not flat_supported(params):
            raise ValueError("flat layout needs parameters of one device and floating dtype, "
                             "each dense in memory")
        self.params = list(params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.numels = [p.numel() for p in self.params]
        self.offsets: list[int] = []
        size = 0
        for n in self.numels:
            self.offsets.append(size)
            size += -(-n // ALIGN) * ALIGN
        self.size = size
        self.numel = sum(self.numels)
        ends = torch.tensor([o + n - 1 for o, n in zip(self.offsets, self.numels, strict=True)],
                            dtype=torch.long, device=self.device)
        self._ends = ends
        self._counts_dtype = torch.promote_types(self.dtype, torch.float32)
        # Per tensor: its element count (the mask mean's denominator).
        self.sizes = torch.tensor(self.numels, dtype=self._counts_dtype, device=self.device)
        spans = torch.tensor([(self.offsets[i + 1] if i + 1 < len(self.offsets) else size)
                              - self.offsets[i] for i in range(len(self.offsets))],
                             device=self.device)
        ids = torch.arange(len(self.numels), dtype=torch.int32, device=self.device)
        self._segment = torch.repeat_interleave(ids, spans)
        # Per ALIGN-element block of the buffer: the tensor it belongs to (gap included).
        self.block_segments = torch.repeat_interleave(ids, spans // ALIGN)
        self.data = self.zeros()
        for p, view in zip(self.params, self.views(self.data), strict=True):
            view.copy_(p.detach())
            p.data = view

    def zeros(self) -> Tensor:
        """A zero buffer of the layout (gaps included)."""
        return torch.zeros(self.size, dtype=self.dtype, device=self.device)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of ``flat``, with each parameter's shape and strides."""
        return [flat.as_strided(p.shape, p.stride(), o)
                for p, o in zip(self.params, self.offsets, strict=True)]

    def pack(self, tensors: Sequence[Tensor | None], out: Tensor,
             views: Sequence[Tensor] | None = None) -> None:
        """Copy per-parameter tensors into ``out`` (None writes zeros), one foreach copy.

        ``views`` are ``self.views(out)`` when the caller keeps them (they cost a Python call
        per tensor to build, more than the copy itself on a GPU).
        """
        views = self.views(out) if views is None else views
        present = [(v, t) for v, t in zip(views, tensors, strict=True) if t is not None]
        if present:
            torch._foreach_copy_([v for v, _ in present], [t for _, t in present])
        absent = [v for v, t in zip(views, tensors, strict=True) if t is None]
        if absent:
            torch._foreach_zero_(absent)

    def segment_sums(self, phi: Tensor) -> Tensor:
        """Per-parameter sums of a flat 0/1 tensor, exactly (int32 prefix sums; no host sync)."""
        prefix = torch.cumsum(phi, 0, dtype=torch.int32)
        at_ends = prefix.index_select(0, self._ends)
        return torch.diff(at_ends, prepend=at_ends.new_zeros(1)).to(self._counts_dtype)

    def normalise_masks_(self, phi: list[Tensor], spec: MaskSpec, *,
                         record: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """phibar = phi / s(phi) per parameter, in place on the flat mask; the admitted count.

        The same contract as ``foreach_normalise_masks_`` for a one-element list holding the
        flat mask.
        """
        (flat,) = phi
        counts = self.segment_sums(flat)
        if record is not None:
            record.append((counts, self.sizes))
        inverse = mask_scale(counts, self.sizes, spec).reciprocal_().to(flat.dtype)
        flat.mul_(inverse.index_select(0, self._segment))
        return counts.sum()
