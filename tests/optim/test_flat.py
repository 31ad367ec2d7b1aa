"""Flat mode: parameters, state and gradients in flat buffers; the step equals the foreach one."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from hco_cli.optim import OPTIMIZER_NAMES, HyperparameterError, build_optimizer
from hco_cli.optim.flat import ALIGN, FlatLayout, flat_supported
from hco_cli.optim.masks import MaskSpec, foreach_normalise_masks_
from hco_cli.optim.sync import GradientSync

# A channels-last 5-D weight, its bias, a 1-element tensor and a 2-D tensor.
SHAPES = [(4, 3, 2, 3, 2), (4,), (1,), (7, 5)]


def _params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    out[0] = out[0].contiguous(memory_format=torch.channels_last_3d)
    return [p.requires_grad_() for p in out]


def _grads(step: int, params: list[torch.Tensor], *, missing: bool = False
           ) -> tuple[list[Any], list[Any]]:
    gen = torch.Generator().manual_seed(500 + step)
    gl: list[Any] = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    gu: list[Any] = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    if missing:
        gl[1] = None
        gu[2] = None
    return gl, gu


def _zeros_for_none(grads: list[Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def _run(opt: Any, params: list[torch.Tensor], steps: range, *, missing: bool = False,
         fill: bool = False) -> Any:
    for step in steps:
        opt.param_groups[0]["lr"] = 0.05 / (1 + step)
        gl, gu = _grads(step, params, missing=missing)
        if fill:
            gl, gu = _zeros_for_none(gl, params), _zeros_for_none(gu, params)
        opt.step_two_source(gl, gu)
    return opt


def _state(opt: Any) -> list[torch.Tensor]:
    state = opt.state_dict()["state"]
    return [v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            for i in sorted(state) for _, v in sorted(state[i].items())]


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_flat_step_equals_foreach_step(name: str, missing: bool) -> None:
    """Six steps in float64; a missing gradient is a zero gradient in flat mode."""
    ref_params, flat_params = _params(), _params()
    ref = build_optimizer(name, ref_params, weight_decay=0.01, foreach=True)
    flat = build_optimizer(name, flat_params, weight_decay=0.01, flat=True)
    assert flat.flat and not ref.flat
    _run(ref, ref_params, range(6), missing=missing, fill=True)
    _run(flat, flat_params, range(6), missing=missing)
    for x, y in zip(ref_params, flat_params, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    for x, y in zip(_state(ref), _state(flat), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    assert (ref.last_alignment is None) == (flat.last_alignment is None)
    if ref.last_alignment is not None:
        assert flat.last_alignment == pytest.approx(ref.last_alignment, abs=1e-12)


def test_parameters_become_aligned_views_of_one_buffer() -> None:
    params = _params()
    values = [p.detach().clone() for p in params]
    opt = build_optimizer("sgd-hco", params, flat=True)
    layout = opt._flat
    assert layout is not None
    storage = layout.data.untyped_storage().data_ptr()
    for p, value, offset in zip(params, values, layout.offsets, strict=True):
        assert p.untyped_storage().data_ptr() == storage
        assert offset % ALIGN == 0 and p.storage_offset() == offset
        assert torch.equal(p, value)
    assert params[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert layout.numel == sum(v.numel() for v in values)


def test_segment_sums_and_normalisation_match_the_per_tensor_path() -> None:
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.zeros(s, dtype=torch.float32) for s in [(300,), (5, 7), (1,), (64,)]]
    layout = FlatLayout(tensors)
    masks = [(torch.rand(t.shape, generator=gen) > 0.6).float() for t in tensors]
    masks[2].zero_()  # an empty mask: clamped scale
    flat = layout.zeros()
    layout.pack(masks, flat)
    counts = layout.segment_sums(flat)
    assert counts.tolist() == [float(m.sum()) for m in masks]
    for norm in ("clamp", "mean_eps", "count_plus_one"):
        spec = MaskSpec(norm=norm, eps=1e-3)
        expected = [m.clone() for m in masks]
        want = foreach_normalise_masks_(expected, spec, _cache())
        got_flat = flat.clone()
        got = layout.normalise_masks_([got_flat], spec)
        assert float(got) == float(want)
        for e, v in zip(expected, layout.views(got_flat), strict=True):
            torch.testing.assert_close(v, e, rtol=0, atol=0)


def _cache() -> Any:
    from hco_cli.optim.masks import LayoutCache
    return LayoutCache()


@pytest.mark.parametrize("name", ["sgd-hco", "adamw-hco", "adam-co", "sgd"])
def test_state_dict_round_trip_between_flat_and_foreach(name: str) -> None:
    """A flat state resumes bit-identically in flat mode and continues in foreach mode."""
    straight = _params()
    _run(build_optimizer(name, straight, weight_decay=0.01, flat=True), straight,
                     range(6))
    first = _params()
    opt = _run(build_optimizer(name, first, weight_decay=0.01, flat=True), first, range(3))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert len(saved["opt"]["state"]) == len(SHAPES)
    for flat in (True, False):
        resumed = [p.clone().requires_grad_() for p in saved["params"]]
        fresh = build_optimizer(name, resumed, weight_decay=0.01, flat=flat,
                                foreach=None if flat else True)
        fresh.load_state_dict(saved["opt"])
        _run(fresh, resumed, range(3, 6))
        for x, y in zip(straight, resumed, strict=True):
            if flat:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_step_uses_p_grad_and_the_reducer_sees_both_flat_sources() -> None:
    params = _params()
    seen: list[int] = []

    def double(grads: list[torch.Tensor]) -> None:
        seen.append(len(grads))
        torch._foreach_mul_(grads, 2.0)

    ref_params = _params()
    ref = build_optimizer("sgd-hco", ref_params, flat=True)
    opt = build_optimizer("sgd-hco", params, flat=True)
    GradientSync(opt, double)
    gl, gu = _grads(0, params)
    opt.step_two_source(gl, gu)
    ref.step_two_source([2 * g for g in gl], [2 * g for g in gu])
    assert seen == [1, 1]
    for x, y in zip(ref_params, params, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    for p, g in zip(params, gl, strict=True):
        p.grad = g
    opt.step()
    assert seen == [1, 1, 1]  # step(): g_L only


def test_foreach_path_reducer_gets_present_gradients_per_source() -> None:
    params = _params()
    seen: list[int] = []
    opt = build_optimizer("adamw-hco", params, foreach=True)
    GradientSync(opt, lambda grads: seen.append(len(grads)))
    gl, gu = _grads(0, params, missing=True)
    opt.step_two_source(gl, gu)
    assert seen == [3, 3]


def test_flat_mode_refusals() -> None:
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(HyperparameterError, match="flat=True needs"):
        build_optimizer("sgd-hco", [a, b], flat=True)
    with pytest.raises(HyperparameterError, match="flat=True needs"):
        build_optimizer("sgd", [{"params": [a]}, {"params": [torch.zeros(2,
                        requires_grad=True)]}], flat=True)
    with pytest.raises(HyperparameterError, match="contradict"):
        build_optimizer("adam", [a], flat=True, foreach=False)
    opt = build_optimizer("adam", [a], flat=True)
    with pytest.raises(HyperparameterError, match="no further parameter groups"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    assert not build_optimizer("sgd", [torch.zeros(3, requires_grad=True)]).flat  # CPU default
    assert not flat_supported([torch.zeros(4, 4).t()[:2]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_cuda_flat_is_the_default_and_equals_foreach(name: str, dtype: torch.dtype) -> None:
    ref_params = [p.detach().cuda().to(dtype).requires_grad_() for p in _params()]
    flat_params = [p.detach().clone().requires_grad_() for p in ref_params]
    ref = build_optimizer(name, ref_params, weight_decay=0.01, flat=False)
    flat = build_optimizer(name, flat_params, weight_decay=0.01)
    assert flat.flat and not ref.flat
    for step in range(6):
        gl, gu = _grads(step, _params())
        gl = [g.cuda().to(dtype) for g in gl]
        gu = [g.cuda().to(dtype) for g in gu]
        ref.step_two_source(gl, gu)
        flat.step_two_source(gl, gu)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                         "atol": 1e-6}
    for x, y in zip(ref_params, flat_params, strict=True):
        torch.testing.assert_close(x, y, **tol)
    if ref.last_alignment is not None:
        assert flat.last_alignment == pytest.approx(ref.last_alignment, abs=1e-9)
