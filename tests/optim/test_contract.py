"""The two-gradient contract shared by all nine optimizers: paths, state, missing gradients."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from hco_cli.optim import OPTIMIZER_NAMES, build_optimizer, optimizer_info
from hco_cli.optim.masks import rescale_

SHAPES = [(5, 4), (6,), (2, 3, 4), (3,)]


def _params(seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def _grads(step: int, params: list[torch.Tensor]) -> tuple[list[Any], list[Any]]:
    """Random g_L, g_U with a rotating pattern of missing entries (tensor 3 never has any)."""
    gen = torch.Generator().manual_seed(100 + step)
    gl: list[Any] = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    gu: list[Any] = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    gl[3] = gu[3] = None
    if step % 3 == 1:
        gu[1] = None
    if step % 3 == 2:
        gl[0] = None
    return gl, gu


def _run(name: str, params: list[torch.Tensor], steps: range, opt: Any = None,
         **kwargs: Any) -> Any:
    opt = opt or build_optimizer(name, params, weight_decay=0.01, **kwargs)
    for step in steps:
        opt.param_groups[0]["lr"] = 0.01 / (1 + step)
        opt.step_two_source(*_grads(step, params))
    return opt


def _snapshot(opt: Any, params: list[torch.Tensor]) -> list[Any]:
    out: list[Any] = [p.detach().clone() for p in params]
    for p in params:
        state = sorted(opt.state.get(p, {}).items())
        out.extend(v for _, v in state if isinstance(v, torch.Tensor))
    return out


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_foreach_equals_single_tensor(name: str) -> None:
    single, multi = _params(), _params()
    a = _run(name, single, range(6), foreach=False)
    b = _run(name, multi, range(6), foreach=True)
    for x, y in zip(_snapshot(a, single), _snapshot(b, multi), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    assert (a.last_alignment is None) == (b.last_alignment is None)
    if a.last_alignment is not None:
        assert a.last_alignment == pytest.approx(b.last_alignment, abs=1e-12)


@pytest.mark.parametrize("name", ["sgd-hco", "adamw-co", "adam-hco"])
def test_foreach_handles_mixed_dtypes(name: str) -> None:
    """Tensors of two dtypes go to separate foreach buckets and match the loop."""
    def mixed() -> list[torch.Tensor]:
        ps = _params()
        ps[2] = ps[2].detach().float().requires_grad_()
        return ps

    single, multi = mixed(), mixed()
    a = _run(name, single, range(4), foreach=False)
    b = _run(name, multi, range(4), foreach=True)
    for x, y in zip(_snapshot(a, single), _snapshot(b, multi), strict=True):
        torch.testing.assert_close(x, y)
    assert a.last_alignment == pytest.approx(b.last_alignment, rel=1e-6)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_state_dict_round_trip_continues_bit_identically(name: str, foreach: bool) -> None:
    straight = _params()
    reference = _run(name, straight, range(6), foreach=foreach)
    first = _params()
    opt = _run(name, first, range(3), foreach=foreach)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [p.clone().requires_grad_() for p in saved["params"]]
    fresh = build_optimizer(name, resumed, weight_decay=0.01, foreach=foreach)
    fresh.load_state_dict(saved["opt"])
    _run(name, resumed, range(3, 6), opt=fresh)
    for x, y in zip(_snapshot(reference, straight), _snapshot(fresh, resumed), strict=True):
        assert torch.equal(x, y)
    assert len(fresh.state) == 3  # the parameter that never had a gradient has no state


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_parameter_without_gradients_is_untouched(name: str, foreach: bool) -> None:
    params = _params()
    before = params[3].detach().clone()
    opt = _run(name, params, range(3), foreach=foreach)
    assert torch.equal(params[3], before)
    assert params[3] not in opt.state
    assert all(p in opt.state for p in params[:3])


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_length_mismatch_is_refused(name: str) -> None:
    params = _params()
    opt = build_optimizer(name, params)
    gl, gu = _grads(0, params)
    with pytest.raises(ValueError, match="grads_labeled has 3 entries but the optimizer has 4"):
        opt.step_two_source(gl[:3], gu)
    with pytest.raises(ValueError, match="grads_unlabeled has 5 entries"):
        opt.step_two_source(gl, [*gu, None])


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_last_alignment_lifecycle(name: str) -> None:
    params = _params()
    opt = build_optimizer(name, params)
    assert opt.last_alignment is None
    opt.step_two_source(*_grads(0, params))
    if optimizer_info(name).variant == "plain":
        assert opt.last_alignment is None
        return
    value = opt.last_alignment
    assert isinstance(value, float) and 0.0 < value <= 1.0
    tensor = opt.last_alignment_tensor
    assert isinstance(tensor, torch.Tensor) and tensor.dim() == 0


def test_hco_step_without_unlabeled_source_masks_nothing() -> None:
    params = _params()
    opt = build_optimizer("sgd-hco", params)
    opt.step_two_source(*_grads(0, params))
    assert opt.last_alignment is not None
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.last_alignment is None


def test_multiple_param_groups_align_with_grads() -> None:
    """Entries follow param_groups order; each group keeps its own learning rate."""
    a, b = torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    opt = build_optimizer("sgd", [{"params": [a]}, {"params": [b], "lr": 1.0}],
                          lr=0.1, momentum=0.0, weight_decay=0.0)
    opt.step_two_source([torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)],
                        [None, torch.ones(2, dtype=torch.float64)])
    torch.testing.assert_close(a, torch.full((3,), -0.1, dtype=torch.float64))
    torch.testing.assert_close(b, torch.full((2,), -2.0, dtype=torch.float64))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.unused_head = nn.Linear(3, 2)  # like BCP's projection heads: never gets a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_framework_call_pattern_skips_unused_parameters(name: str) -> None:
    torch.manual_seed(0)
    net = _Net()
    params = list(net.parameters())
    head = [p.detach().clone() for p in net.unused_head.parameters()]
    opt = build_optimizer(name, params)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(2):
            out = net(torch.randn(8, 4))
            loss_l, loss_u = out[:4].pow(2).mean(), out[4:].sin().mean()
            gl = torch.autograd.grad(loss_l, params, retain_graph=True, allow_unused=True)
            gu = torch.autograd.grad(loss_u, params, allow_unused=True)
            opt.step_two_source(gl, gu)
            scheduler.step()
    assert all(torch.equal(p, q) for p, q in zip(net.unused_head.parameters(), head, strict=True))
    assert all(p not in opt.state for p in net.unused_head.parameters())
    assert opt.param_groups[0]["lr"] == pytest.approx(optimizer_info(name).defaults["lr"] / 4)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_caller_gradients_are_not_modified(name: str) -> None:
    params = _params()
    for foreach in (False, True):
        opt = build_optimizer(name, params, weight_decay=0.1, foreach=foreach)
        gl, gu = _grads(0, params)
        copies = [None if g is None else g.clone() for g in (*gl, *gu)]
        opt.step_two_source(gl, gu)
        for g, c in zip((*gl, *gu), copies, strict=True):
            assert (g is None and c is None) or (c is not None and torch.equal(g, c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_mask_rescale_is_exact(dtype: torch.dtype) -> None:
    """The CUDA form phi + (1/s - 1) phi equals phi / s exactly for 0/1 masks."""
    gen = torch.Generator().manual_seed(0)
    phi = [(torch.rand(n, generator=gen) > q).to(dtype) for n, q in ((50, 0.3), (7, 0.9), (9, 0))]
    inverse = torch.tensor([1 / 0.7, 1 / 1e-3, 1 / 1.001], dtype=dtype)
    fused, plain = [t.clone() for t in phi], [t.clone() for t in phi]
    rescale_(fused, inverse, fused=True)
    rescale_(plain, inverse, fused=False)
    for a, b, p, inv in zip(fused, plain, phi, inverse, strict=True):
        assert torch.equal(a, b) and torch.equal(a, p * inv)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_cuda_foreach_equals_single_tensor(name: str) -> None:
    single = [p.detach().cuda().requires_grad_() for p in _params()]
    multi = [p.detach().cuda().requires_grad_() for p in _params()]
    a = build_optimizer(name, single, weight_decay=0.01, foreach=False)
    b = build_optimizer(name, multi, weight_decay=0.01, foreach=True, flat=False)
    for step in range(6):
        gl, gu = _grads(step, single)
        move = [None if g is None else g.cuda() for g in (*gl, *gu)]
        a.step_two_source(move[:4], move[4:])
        b.step_two_source(move[:4], move[4:])
    for x, y in zip(_snapshot(a, single), _snapshot(b, multi), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    if a.last_alignment is not None:
        assert a.last_alignment == pytest.approx(b.last_alignment, abs=1e-12)


@pytest.mark.parametrize(("source", "target"), [("adam", "adam-hco"), ("sgd", "sgd-co"),
                                                ("adamw-hco", "adamw")])
def test_state_from_another_variant_keeps_the_target_algorithm(source: str, target: str) -> None:
    """E.g. BCP-Pancreas restores the pre-training Adam state into the self-training optimizer."""
    first = _params()
    saved = _run(source, first, range(3)).state_dict()
    expected = [p.detach().clone().requires_grad_() for p in first]
    masked = optimizer_info(target).variant != "plain"
    extra = {"mask_norm": "mean_eps"} if masked else {}
    reference = build_optimizer(target, expected, weight_decay=0.01, **extra)
    reference.load_state_dict(saved)
    assert reference.param_groups[0]["variant"] == optimizer_info(target).variant
    assert reference.param_groups[0]["mask_norm"] == ("mean_eps" if masked else None)
    moments = [v for p in expected for v in reference.state.get(p, {}).values()]
    assert moments and all(not isinstance(v, torch.Tensor) or v.abs().sum() > 0 for v in moments)
    _run(target, expected, range(3, 5), opt=reference)
    assert (reference.last_alignment is None) == (not masked)
