"""The overlap's buckets and its single-process behaviour (the 2-process checks are in
tests/training/test_distributed.py)."""

from __future__ import annotations

import torch
from torch import nn

from hco_cli.optim import build_optimizer
from hco_cli.optim.flat import ALIGN, FlatLayout
from hco_cli.optim.overlap import flat_buckets
from hco_cli.optim.sync import GradientSync
from hco_cli.ssl.base import two_source_step
from hco_cli.training.distributed import BucketedAllReduce


def _layout(numels: list[int]) -> FlatLayout:
    return FlatLayout([nn.Parameter(torch.zeros(n)) for n in numels])


def test_buckets_tile_the_layout_from_its_end() -> None:
    layout = _layout([10, 3000, 500, 700, 5000, 20])  # spans of 1, 3, 1, 1, 5 and 1 ALIGN
    spans = flat_buckets(layout, 3 * ALIGN * 4)  # 3 blocks of float32 per bucket
    assert [members for _, _, members in spans] == [[5], [4], [3, 2], [1], [0]]
    ends = [end for _, end, _ in spans]
    starts = [start for start, _, _ in spans]
    assert ends[0] == layout.size and starts[-1] == 0
    assert starts[:-1] == ends[1:]  # contiguous, no overlap, no hole
    for start, end, members in spans:
        assert start == layout.offsets[min(members)]
        assert (end - start) * 4 <= 3 * ALIGN * 4 or len(members) == 1
    assert [m for _, _, m in flat_buckets(layout, 2**30)] == [[5, 4, 3, 2, 1, 0]]


def _step(*, reducer: BucketedAllReduce | None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    params = list(net.parameters())
    opt = build_optimizer("sgd-hco", params, flat=True, lr=0.1, momentum=0.9)
    if reducer is not None:
        assert GradientSync(opt, reducer).overlap is None
    assert not any(p._backward_hooks for p in params)
    x = torch.randn(5, 4)
    two_source_step(opt, params, net(x).square().mean(), (net(x + 1) - 1).abs().mean())
    return [p.detach().clone() for p in params]


def test_one_process_registers_no_hooks_and_steps_as_before() -> None:
    plain = _step(reducer=None)
    one = _step(reducer=BucketedAllReduce(1))  # a one-process reducer: no overlap either
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    params = list(net.parameters())
    opt = build_optimizer("sgd-hco", params, flat=True, lr=0.1, momentum=0.9)
    x = torch.randn(5, 4)
    g_l = torch.autograd.grad(net(x).square().mean(), params)
    g_u = torch.autograd.grad((net(x + 1) - 1).abs().mean(), params)
    opt.step_two_source(list(g_l), list(g_u))
    for a, b, c in zip(plain, one, params, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
