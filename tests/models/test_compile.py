"""``compile: true``: the compiled V-Net computes what the eager one does, its copies (the EMA
teacher) run their own parameters, and the config accepts only torch's modes."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Imported at collection: inductor reads its kernel templates with the locale's encoding, and
# later in a full run something leaves an ASCII locale behind (UnicodeDecodeError there).
import torch._functorch.config as functorch_config
import torch._inductor.compile_fx

from hco_cli.config import validate_config
from hco_cli.errors import ConfigError
from hco_cli.models import ModelConfig
from hco_cli.models.compiling import compiled_function
from hco_cli.models.vnet import VNet, build_model, compile_forward


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # float64: BatchNorm over the few bottleneck voxels of a tiny input amplifies float32
    # rounding (the compiled reductions sum in another order) to 1e-3; in float64 it stays ~1e-12.
    return build_model(ModelConfig(n_filters=2, dropout=False), in_channels=1,
                       num_classes=2).double()


@pytest.mark.slow
def test_compiled_forward_and_backward_match_eager() -> None:
    """Train mode (BatchNorm batch statistics and running-statistics updates), one compile."""
    eager, compiled = _net(0), compile_forward(_net(0))
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    want, got = eager(x), compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    want.square().sum().backward()
    got.square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-10)
    for a, b in zip(eager.buffers(), compiled.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    # A deepcopy (how the EMA teacher is made) runs compiled, with its own parameters.
    teacher = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
    assert teacher.compile_mode == "default"  # type: ignore[union-attr]
    assert torch._dynamo.config.recompile_limit >= 64  # the variants of one shared function
    eager.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(teacher(x), eager(x), rtol=1e-9, atol=1e-10)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    # The hierarchical optimizers take two gradients through one graph (g_L with
    # retain_graph=True, then g_U), which torch's donated buffers forbid in a compiled backward.
    eager.load_state_dict(compiled.state_dict())
    params_e, params_c = list(eager.parameters()), list(compiled.parameters())
    out_e, out_c = eager(x), compiled(x)
    for out, params, grads in ((out_e, params_e, want_g := []), (out_c, params_c, got_g := [])):
        grads.extend(torch.autograd.grad(out.square().sum(), params, retain_graph=True))
        grads.extend(torch.autograd.grad(out.abs().sum(), params))
    for a, b in zip(want_g, got_g, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


def test_compile_config_accepts_only_torch_modes() -> None:
    base = {"data": {"path": "data/x", "patch_size": [32, 32, 16]},
            "framework": {"name": "supervised"}, "optimizer": {"name": "sgd"}}
    assert validate_config(base).compile is False
    assert validate_config({**base, "compile": True}).compile is True
    assert validate_config({**base, "compile": "reduce-overhead"}).compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="compile"):
        validate_config({**base, "compile": "fastest"})
    with pytest.raises(TypeError, match="VNet"):
        compile_forward(torch.nn.Conv3d(1, 1, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_two_gradients_through_one_compiled_forward(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an HCO step does on the GPU (g_L with retain_graph, then g_U), against float64 eager
    gradients: the compiled float32 gradients are as close to them as eager float32's are (a
    clobbered saved activation is off by O(1)). TF32 is off: with it, eager float32 itself is
    17-20 % off in norm for this net on an H200, which would hide everything."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    net = build_model(ModelConfig(n_filters=4, dropout=False), in_channels=1, num_classes=2)
    reference = copy.deepcopy(net).double().cuda()
    eager = copy.deepcopy(net).cuda()
    compiled = compile_forward(net.cuda(), mode)
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))

    def flat(grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([g.double().flatten() for g in grads])

    for step in range(3):  # CUDA graphs record on a later call than the first
        outs = [m(x.cuda().to(dtype)) for m, dtype in
                ((reference, torch.float64), (eager, torch.float32), (compiled, torch.float32))]
        for loss in (lambda o: o.square().mean(), lambda o: o.abs().mean()):
            want, e, c = (flat(torch.autograd.grad(loss(o), list(m.parameters()),
                                                   retain_graph=True))
                          for o, m in zip(outs, (reference, eager, compiled), strict=True))
            eager_error = ((e - want).norm() / want.norm()).item()
            compiled_error = ((c - want).norm() / want.norm()).item()
            assert eager_error < 1e-2, step  # float32 rounding, nothing more
            assert compiled_error < 2 * eager_error + 1e-4, (step, compiled_error, eager_error)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("forwards", [1, 2], ids=["one-forward", "two-forwards"])
def test_cuda_graph_gradients_held_across_the_second_backward(forwards: int) -> None:
    """An hco step keeps g_L, as autograd returned it, while g_U goes back through the network
    (BCP's source split: g_L and g_U through two forwards; mean teacher, CMT and the region split:
    both through one), and only then steps. Under CUDA graphs the returned gradients live in the
    graphs' memory pool, which a later replay may write into. Held (not copied) across four
    steps' second backward, both gradients of the compiled float64 network equal eager's to 1e-8
    (float64 rounding is ~1e-12; a buffer written by another replay is off by O(1))."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(n_filters=4, dropout=False), in_channels=1,
                      num_classes=2).double().cuda()
    eager = copy.deepcopy(net)
    compiled = compile_forward(net, "reduce-overhead")
    gen = torch.Generator().manual_seed(1)
    for step in range(6):  # the first calls warm up and record
        x1, x2 = (torch.randn(2, 1, 32, 32, 32, generator=gen, dtype=torch.float64).cuda()
                  for _ in range(2))
        held = {}
        for name, m in (("eager", eager), ("compiled", compiled)):
            params = list(m.parameters())
            out1 = m(x1)
            out2 = out1 if forwards == 1 else m(x2)
            g_l = torch.autograd.grad(out1.square().mean(), params, retain_graph=True)
            g_u = torch.autograd.grad(out2.abs().mean(), params)
            held[name] = (g_l, g_u)  # not copied before both passes have run
        for which, want, got in zip(("g_L", "g_U"), held["eager"], held["compiled"], strict=True):
            w = torch.cat([g.flatten() for g in want])
            error = float((torch.cat([g.flatten() for g in got]) - w).norm() / w.norm())
            assert error < 1e-8, (step, which, error)
        with torch.no_grad():  # a step, as training takes, so that every call sees new weights
            step_grads = [gl + gu for gl, gu in zip(*held["eager"], strict=True)]
            for m in (eager, compiled):
                for param, g in zip(m.parameters(), step_grads, strict=True):
                    param.sub_(0.01 * g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("grad", [True, False], ids=["student", "teacher"])
def test_cuda_graph_replays_draw_new_dropout_masks(grad: bool) -> None:
    """A CUDA graph replays the kernels it captured: a dropout whose random numbers were captured
    rather than drawn anew per replay would drop the same channels at every iteration (the
    student with gradients, the teacher without). Same input, six calls past the recording:
    every output differs from every other, as eager's do.

    The student's gradients come from ``torch.autograd.grad``, as training takes them. With
    ``.backward()`` the loop failed at its first recorded call ("accessing tensor output of
    CUDAGraphs that has been overwritten", H200, torch 2.11, with or without
    ``cudagraph_mark_step_begin``, fp32 and bf16): its calls accumulate into ``.grad``, which
    torch 2.13's message for this case names as the cause when a recorded backward allocated
    ``.grad``. Training never accumulates into ``.grad``."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(n_filters=4, dropout=True), in_channels=1, num_classes=2)
    compiled = compile_forward(net.cuda(), "reduce-overhead").train()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    outs = []
    with torch.set_grad_enabled(grad):
        for _ in range(9):  # the first calls warm up and record
            out = compiled(x)  # a copy is all the test keeps
            outs.append(out.detach().clone())
            if grad:  # as training takes its gradients: autograd.grad, nothing into .grad
                torch.autograd.grad(out.float().square().mean(), list(net.parameters()))
            del out
    late = outs[3:]
    smallest = min(float((late[i] - late[j]).abs().max())
                   for i in range(len(late)) for j in range(i + 1, len(late)))
    # Against the spread of the same input without dropout (eval mode): zero but for kernels
    # that sum in another order from call to call.
    noise = float((lambda a, b: (a - b).abs().max())(*_eval_twice(compiled, x)))
    assert smallest > 100 * noise + 1e-4, (smallest, noise)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_graph_dropout_backward_uses_the_forward_mask() -> None:
    """The V-Net's Dropout3d behind a 1x1x1 convolution, compiled with CUDA graphs and the
    options of :func:`vnet._compiled` (dropout through torch's kernels): the backward must drop
    what the forward dropped. With y = dropout(conv(h)) and L = sum(r * y), dL/dW is the sum over
    voxels of 2 r m h (m: the channel mask the forward drew, read off y's zeros), in float64 to
    1e-10, at every replay; and the masks change from replay to replay."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 6, 1, bias=False).double().cuda()
    net = torch.nn.Sequential(conv, torch.nn.Dropout3d(0.5)).train()
    options = {**torch._inductor.list_mode_options("reduce-overhead"), "fallback_random": True}
    compiled = torch.compile(net, options=options, dynamic=False)
    gen = torch.Generator().manual_seed(1)
    masks = []
    with functorch_config.patch(donated_buffer=False):  # as compile_forward sets it
        for step in range(8):  # the first calls warm up and record
            h = torch.randn(3, 6, 8, 8, 8, generator=gen, dtype=torch.float64).cuda()
            r = torch.randn(3, 6, 8, 8, 8, generator=gen, dtype=torch.float64).cuda()
            conv.weight.grad = None
            y = compiled(h)
            kept = (y.detach() != 0).flatten(2).any(2).double()  # (batch, channel)
            masks.append(kept.clone())
            (r * y).sum().backward()
            want = torch.einsum("bov,biv->oi", 2 * r.flatten(2) * kept[..., None], h.flatten(2))
            got = conv.weight.grad.reshape(6, 6)
            error = float((got - want).norm() / want.norm())
            assert error < 1e-10, (step, error)
    late = masks[3:]
    assert 0 < float(torch.stack(late).mean()) < 1
    assert all(not torch.equal(a, b) for i, a in enumerate(late) for b in late[i + 1:])


def _eval_twice(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two eval-mode (no dropout) outputs of ``net`` on ``x``, cloned before the next call."""
    net.eval()
    with torch.inference_mode():
        first = net(x).clone()
        second = net(x).clone()
    net.train()
    return first, second


@pytest.mark.slow
def test_a_backward_cached_with_donated_buffers_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch's on-disk compile cache does not key on ``donated_buffer``: a backward compiled
    with donated buffers (the default, e.g. by an earlier process or hco version) was found and
    reused by a process that turned them off, and wrote into the saved activations that HCO's
    second gradient reads (wrong by ~1e5 here). ``inplace_buffers`` off is part of the key."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    # Another user of the cache: torch's defaults, one backward.
    with functorch_config.patch(donated_buffer=True):
        other = torch.compile(VNet.forward, dynamic=False)
        other(_net(0), x).square().sum().backward()
    torch._dynamo.reset()
    compiled_function.cache_clear()  # one compiled V-Net forward per mode, cached there
    eager, compiled = _net(0), compile_forward(_net(0))
    grads = []
    for net in (eager, compiled):
        out, params = net(x), list(net.parameters())
        grads.append([*torch.autograd.grad(out.square().sum(), params, retain_graph=True),
                      *torch.autograd.grad(out.square().sum(), params)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


def test_compiler_packages_load_only_for_compiling_runs() -> None:
    """torch._dynamo and torch._inductor take about 1 s to import: training, prediction and
    sweeps import them only when a run compiles."""
    code = ("import sys\n"
            "import hco_cli.inference.predict, hco_cli.training.entry, hco_cli.workflows.sweep\n"
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
