"""Fused Triton kernels for the hco steps in flat mode: two launches per step.

The torch flat path runs about 25 full-size passes per step; here one kernel does the labeled
step and the mask, and a second one the rest. Kernel 1 reads the state and both gradients,
writes the labeled state (SGD's m^L, Adam's m and v after g_L) and adds each block's admitted
mask count to its tensor's counter (one int32 atomic per block, so counts are exact). Kernel 2
needs those global counts for phibar = phi / s(phi): it rereads the labeled state and g_U,
recomputes phi from them (the same product of the same stored values, so the mask equals the
counted one), and writes the parameters and the final state. Its first block also sums the
counts into the admitted total (float64, the step's alignment numerator) and zeroes the other
row of a two-row counter, which the next step's kernel 1 fills: no memset launch, no host sync.

A block of BLOCK = ALIGN elements never straddles two tensors (flat.py), so it finds its tensor
in ``FlatLayout.block_segments``. The gaps between tensors are zero in every buffer: zero state
and zero gradients give m = v = 0, phi = 0 and u = 0 / (0 + eps) = 0, so they stay zero.

The arithmetic is that of ``_multi_tensor_hco_sgd`` and ``_multi_tensor_adam`` + ``_hco_refine``
in fp32, in their operation order, with IEEE division and square root (``div_rn``,
``sqrt_rn``, as torch's CUDA kernels). Without g_U only kernel 2 runs, doing the labeled step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from hco_cli.devices import launching_on
from hco_cli.optim.flat import ALIGN, FlatLayout
from hco_cli.optim.masks import MaskSpec

BLOCK = ALIGN
SEG_BLOCK = 128  # counters summed per iteration by kernel 2's first block
# 4 warps: 8 fp32 per thread, two 16-byte accesses per buffer. FMA contraction as nvcc does
# for torch's kernels, asked for explicitly (Triton 3.10 turns the default off).
LAUNCH: dict[str, Any] = {"num_warps": 4, "enable_fp_fusion": True}
_NORMS = {"clamp": 0, "mean_eps": 1, "count_plus_one": 2}


# ------------------------------------------------------------------------------ shared pieces
@triton.jit
def _block(n, BLOCK: tl.constexpr):
    """This program's element offsets (int64) and the in-buffer mask of the tail."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _count(m, g_u, seg_ptr, counts_ptr):
    """Add the block's admitted count, #(m * g_U > 0), to its tensor's counter."""
    admitted = tl.sum((m * g_u > 0).to(tl.int32), axis=0)
    tl.atomic_add(counts_ptr + tl.load(seg_ptr + tl.program_id(0)), admitted, sem="relaxed")


@triton.jit
def _inverse_scale(seg_ptr, counts_ptr, sizes_ptr, eps, NORM: tl.constexpr):
    """1 / s(phi) of the block's tensor, as FlatLayout.normalise_masks_ computes it in fp32."""
    seg = tl.load(seg_ptr + tl.program_id(0))
    count = tl.load(counts_ptr + seg).to(tl.float32)
    size = tl.load(sizes_ptr + seg)
    if NORM == 0:
        scale = tl.maximum(tl.div_rn(count, size), eps)
    elif NORM == 1:
        scale = tl.div_rn(count, size) + eps
    else:
        scale = tl.div_rn(count + 1.0, size)
    return tl.div_rn(tl.full([], 1.0, tl.float32), scale)


@triton.jit
def _close_counts(counts_ptr, next_counts_ptr, total_ptr, n_seg, SEG_BLOCK: tl.constexpr):
    """First block only: total admitted count (float64), and zero the next step's counters."""
    if tl.program_id(0) == 0:
        acc = tl.zeros([SEG_BLOCK], dtype=tl.int64)
        for start in range(0, n_seg, SEG_BLOCK):
            idx = start + tl.arange(0, SEG_BLOCK)
            valid = idx < n_seg
            acc += tl.load(counts_ptr + idx, mask=valid, other=0).to(tl.int64)
            tl.store(next_counts_ptr + idx, tl.zeros([SEG_BLOCK], dtype=tl.int32), mask=valid)
        tl.store(total_ptr, tl.sum(acc, axis=0).to(tl.float64))


# -------------------------------------------------------------------------------------- SGD
@triton.jit
def _sgd_labeled(buf_ptr, gl_ptr, offs, inside, momentum, HAS_L: tl.constexpr):
    """m^L = g_L + mu m (g_L absent: zeros)."""
    buf = tl.load(buf_ptr + offs, mask=inside, other=0.0)
    if HAS_L:
        m_l = tl.load(gl_ptr + offs, mask=inside, other=0.0) + momentum * buf
    else:
        m_l = momentum * buf
    return m_l


@triton.jit
def _sgd_mask_kernel(buf_ptr, gl_ptr, gu_ptr, seg_ptr, counts_ptr, n, momentum,
                     HAS_L: tl.constexpr, BLOCK: tl.constexpr):
    """Kernel 1: m <- m^L, and the per-tensor counts of phi = 1[m^L g_U > 0]."""
    offs, inside = _block(n, BLOCK)
    m_l = _sgd_labeled(buf_ptr, gl_ptr, offs, inside, momentum, HAS_L)
    g_u = tl.load(gu_ptr + offs, mask=inside, other=0.0)
    tl.store(buf_ptr + offs, m_l, mask=inside)
    _count(m_l, g_u, seg_ptr, counts_ptr)


@triton.jit
def _sgd_apply_kernel(p_ptr, buf_ptr, gl_ptr, gu_ptr, seg_ptr, counts_ptr, sizes_ptr,
                      next_counts_ptr, total_ptr, n, n_seg, momentum, decay, step, eps,
                      HAS_L: tl.constexpr, HAS_U: tl.constexpr, DOUBLE_DECAY: tl.constexpr,
                      NORM: tl.constexpr, BLOCK: tl.constexpr, SEG_BLOCK: tl.constexpr):
    """Kernel 2: w <- decay w - lr decay (m^L + m phibar), m <- [mu] m^L + g_U phibar."""
    offs, inside = _block(n, BLOCK)
    p = tl.load(p_ptr + offs, mask=inside, other=0.0) * decay
    if HAS_U:
        m_l = tl.load(buf_ptr + offs, mask=inside, other=0.0)
        g_u = tl.load(gu_ptr + offs, mask=inside, other=0.0)
        inverse = _inverse_scale(seg_ptr, counts_ptr, sizes_ptr, eps, NORM)
        phibar = tl.where(m_l * g_u > 0, inverse, 0.0)
        m = m_l
        if DOUBLE_DECAY:
            m = m_l * momentum
        m = m + g_u * phibar
        p = p + step * m_l
        p = p + step * (m * phibar)
        _close_counts(counts_ptr, next_counts_ptr, total_ptr, n_seg, SEG_BLOCK)
    else:
        m = _sgd_labeled(buf_ptr, gl_ptr, offs, inside, momentum, HAS_L)
        p = p + step * m
    tl.store(buf_ptr + offs, m, mask=inside)
    tl.store(p_ptr + offs, p, mask=inside)


# ------------------------------------------------------------------------------------- Adam
@triton.jit
def _adam_labeled(p, gl_ptr, m_ptr, v_ptr, offs, inside, one_minus_beta1, beta2, one_minus_beta2,
                  weight_decay, HAS_L: tl.constexpr, L2: tl.constexpr,
                  LERP_SMALL: tl.constexpr):
    """m, v after g_L (+ gamma w for coupled L2); m by torch's two-sided lerp formula."""
    m = tl.load(m_ptr + offs, mask=inside, other=0.0)
    v = tl.load(v_ptr + offs, mask=inside, other=0.0)
    g = tl.zeros_like(m)
    if HAS_L:
        g = tl.load(gl_ptr + offs, mask=inside, other=0.0)
    if L2:
        g = g + weight_decay * p
    if LERP_SMALL:  # noqa: SIM108 (constexpr branches read better as statements in kernels)
        m = m + one_minus_beta1 * (g - m)
    else:
        m = g - (g - m) * (1.0 - one_minus_beta1)
    v = v * beta2
    v = v + one_minus_beta2 * (g * g)
    return m, v


@triton.jit
def _adam_mask_kernel(p_ptr, gl_ptr, gu_ptr, m_ptr, v_ptr, seg_ptr, counts_ptr, n, one_minus_beta1,
                      beta2, one_minus_beta2, weight_decay, HAS_L: tl.constexpr,
                      L2: tl.constexpr, LERP_SMALL: tl.constexpr, BLOCK: tl.constexpr):
    """Kernel 1: m, v <- the labeled moments, and the per-tensor counts of 1[m g_U > 0]."""
    offs, inside = _block(n, BLOCK)
    p = tl.zeros([BLOCK], dtype=tl.float32)
    if L2:
        p = tl.load(p_ptr + offs, mask=inside, other=0.0)
    m, v = _adam_labeled(p, gl_ptr, m_ptr, v_ptr, offs, inside, one_minus_beta1, beta2,
                         one_minus_beta2, weight_decay, HAS_L, L2, LERP_SMALL)
    g_u = tl.load(gu_ptr + offs, mask=inside, other=0.0)
    tl.store(m_ptr + offs, m, mask=inside)
    tl.store(v_ptr + offs, v, mask=inside)
    _count(m, g_u, seg_ptr, counts_ptr)


@triton.jit
def _adam_apply_kernel(p_ptr, gl_ptr, gu_ptr, m_ptr, v_ptr, seg_ptr, counts_ptr, sizes_ptr,
                       next_counts_ptr, total_ptr, n, n_seg, one_minus_beta1, beta2,
                       one_minus_beta2, weight_decay, decay, step, eps_root, mask_eps,
                       HAS_L: tl.constexpr, HAS_U: tl.constexpr, L2: tl.constexpr,
                       LERP_SMALL: tl.constexpr, NORM: tl.constexpr, BLOCK: tl.constexpr,
                       SEG_BLOCK: tl.constexpr):
    """Kernel 2: w <- decay w + step (u^L + phibar u), m, v refined by g_U phi."""
    offs, inside = _block(n, BLOCK)
    p = tl.load(p_ptr + offs, mask=inside, other=0.0)
    if HAS_U:
        m = tl.load(m_ptr + offs, mask=inside, other=0.0)
        v = tl.load(v_ptr + offs, mask=inside, other=0.0)
    else:
        m, v = _adam_labeled(p, gl_ptr, m_ptr, v_ptr, offs, inside, one_minus_beta1, beta2,
                             one_minus_beta2, weight_decay, HAS_L, L2, LERP_SMALL)
    p = p * decay
    p = p + step * tl.div_rn(m, tl.sqrt_rn(v) + eps_root)
    if HAS_U:
        g_u = tl.load(gu_ptr + offs, mask=inside, other=0.0)
        phi = m * g_u > 0
        masked = tl.where(phi, g_u, 0.0)
        m = m + one_minus_beta1 * masked
        v = v + one_minus_beta2 * (masked * masked)
        inverse = _inverse_scale(seg_ptr, counts_ptr, sizes_ptr, mask_eps, NORM)
        phibar = tl.where(phi, inverse, 0.0)
        p = p + step * tl.div_rn(phibar * m, tl.sqrt_rn(v) + eps_root)
        _close_counts(counts_ptr, next_counts_ptr, total_ptr, n_seg, SEG_BLOCK)
    tl.store(m_ptr + offs, m, mask=inside)
    tl.store(v_ptr + offs, v, mask=inside)
    tl.store(p_ptr + offs, p, mask=inside)


# ------------------------------------------------------------------------------- host side
def interpreted() -> bool:
    """True when these kernels run in Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_sgd_mask_kernel, triton.runtime.JITFunction)


class FusedHcoStep:
    """The per-optimizer scratch of the fused step and the two launches of each family.

    ``counts`` has two rows of per-tensor counters: a step counts into one row while its
    second kernel zeroes the other, and the next step uses that one.
    """

    def __init__(self, layout: FlatLayout) -> None:
        if layout.dtype != torch.float32:
            raise ValueError(f"the fused hco step needs float32 buffers, not {layout.dtype}")
        self.layout = layout
        # Rows padded to 128 bytes, so both rows have the same pointer alignment (one compile).
        row = -(-len(layout.params) // 32) * 32
        self.counts = torch.zeros(2, row, dtype=torch.int32, device=layout.device)
        self.total = torch.zeros((), dtype=torch.float64, device=layout.device)
        self._row = 0
        self._grid = (layout.block_segments.numel(),)

    def _count_args(self, has_u: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(block segments, this step's counters, the next step's counters, total)."""
        row = self._row
        if has_u:
            self._row = 1 - row
        return (self.layout.block_segments, self.counts[row], self.counts[1 - row], self.total)

    def last_counts(self) -> Tensor:
        """Per-tensor admitted counts of the last step with g_U (valid until the next step)."""
        return self.counts[1 - self._row, :len(self.layout.params)]

    def _result(self, has_u: bool) -> list[tuple[Tensor, int]]:
        return [(self.total, self.layout.numel)] if has_u else []

    def sgd(self, grad_l: Tensor | None, grad_u: Tensor | None, buf: Tensor, *, lr: float,
            momentum: float, weight_decay: float, double_decay: bool, spec: MaskSpec
            ) -> list[tuple[Tensor, int]]:
        """One sgd-hco step in place on the layout's data and ``buf``; (admitted, numel)."""
        layout, has_u = self.layout, grad_u is not None
        seg, counts, next_counts, total = self._count_args(has_u)
        g_l = grad_u if grad_l is None else grad_l  # a placeholder pointer when absent
        g_u = g_l if grad_u is None else grad_u
        decay = 1.0 - lr * weight_decay
        with launching_on(self.layout.device):
            if has_u:
                _sgd_mask_kernel[self._grid](buf, g_l, g_u, seg, counts, layout.size,
                                             float(momentum), HAS_L=grad_l is not None,
                                             BLOCK=BLOCK, **LAUNCH)
            _sgd_apply_kernel[self._grid](
                layout.data, buf, g_l, g_u, seg, counts, layout.sizes, next_counts, total,
                layout.size, len(layout.params), float(momentum), float(decay),
                float(-lr * decay), float(spec.eps), HAS_L=grad_l is not None, HAS_U=has_u,
                DOUBLE_DECAY=double_decay, NORM=_NORMS[spec.norm], BLOCK=BLOCK,
                SEG_BLOCK=SEG_BLOCK, **LAUNCH)
        return self._result(has_u)

    def adam(self, grad_l: Tensor | None, grad_u: Tensor | None, m: Tensor, v: Tensor, *,
             step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
             decoupled: bool, spec: MaskSpec) -> list[tuple[Tensor, int]]:
        """One adam(w)-hco step in place on the layout's data, ``m`` and ``v``."""
        layout, has_u = self.layout, grad_u is not None
        seg, counts, next_counts, total = self._count_args(has_u)
        g_l = grad_u if grad_l is None else grad_l
        g_u = g_l if grad_u is None else grad_u
        decay = 1.0 - lr * weight_decay if decoupled else 1.0
        root_bc2 = math.sqrt(1.0 - beta2**step)
        shared: dict[str, Any] = {
            "one_minus_beta1": float(1.0 - beta1), "beta2": float(beta2),
            "one_minus_beta2": float(1.0 - beta2), "weight_decay": float(weight_decay),
        }
        flags: dict[str, Any] = {
            "HAS_L": grad_l is not None, "L2": weight_decay != 0 and not decoupled,
            "LERP_SMALL": abs(1.0 - beta1) < 0.5, "BLOCK": BLOCK, **LAUNCH,
        }
        with launching_on(self.layout.device):
            if has_u:
                _adam_mask_kernel[self._grid](layout.data, g_l, g_u, m, v, seg, counts,
                                              layout.size, **shared, **flags)
            _adam_apply_kernel[self._grid](
                layout.data, g_l, g_u, m, v, seg, counts, layout.sizes, next_counts, total,
                layout.size, len(layout.params), **shared, decay=float(decay),
                step=float(-lr * decay * root_bc2 / (1.0 - beta1**step)),
                eps_root=float(eps * root_bc2), mask_eps=float(spec.eps), HAS_U=has_u,
                NORM=_NORMS[spec.norm], SEG_BLOCK=SEG_BLOCK, **flags)
        return self._result(has_u)
