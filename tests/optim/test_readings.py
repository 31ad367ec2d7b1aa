"""The readings of the hco update, the controls and the diagnostics against float64 NumPy.

The reference below is written from the formulas of ``hco_cli.optim.readings`` (not from the
implementation): every reading x family x execution mode must match it to float64 precision.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from hco_cli.optim import build_optimizer
from hco_cli.optim.masks import HyperparameterError

SHAPES = [(4, 3, 2), (7,), (3, 5)]
LRS = [0.05, 0.03, 0.02, 0.01]
MODES: dict[str, dict[str, Any]] = {
    "single": {"foreach": False, "flat": False},
    "foreach": {"foreach": True, "flat": False},
    "flat": {"flat": True, "fused": False},
}
SGD_READINGS = [
    {"refine_mask": r, "second_term": s, "persist_refinement": p, "double_decay": d}
    for r, s, p, d in itertools.product(("scaled", "binary"), ("refined", "increment"),
                                        (True, False), (True, False))
    if not (s == "increment" and d)]
ADAM_READINGS = [
    {"refine_mask": r, "second_term": s, "persist_refinement": p}
    for r, s, p in itertools.product(("scaled", "binary"), ("refined", "increment"), (True, False))]


def _clamp_scale(phi: np.ndarray) -> float:
    return max(phi.mean(), 1e-3)


def sgd_hco_reference(w: np.ndarray, gl: np.ndarray, gu: np.ndarray | None, st: dict[str, Any],
                      lr: float, mu: float, gamma: float, rd: dict[str, Any]) -> np.ndarray:
    m_l = mu * st.get("b", 0.0) + gl
    if gu is None:
        st["b"] = m_l
        w = w - lr * m_l
        return w - lr * gamma * w
    phi = (m_l * gu > 0).astype(float)
    phibar = phi / _clamp_scale(phi)
    gate = phi if rd["refine_mask"] == "binary" else phibar
    m = (mu * m_l if rd["double_decay"] else m_l) + gu * gate
    second = m - m_l if rd["second_term"] == "increment" else m
    w = w - lr * m_l - lr * phibar * second
    st["b"] = m if rd["persist_refinement"] else m_l
    return w - lr * gamma * w


def adam_hco_reference(w: np.ndarray, gl: np.ndarray, gu: np.ndarray | None, st: dict[str, Any],
                       lr: float, decoupled: bool, hp: dict[str, Any],
                       rd: dict[str, Any]) -> np.ndarray:
    (b1, b2), eps, gamma = hp["betas"], hp["eps"], hp["weight_decay"]
    t = st["t"] = st.get("t", 0) + 1
    g = gl if decoupled else gl + gamma * w
    m = b1 * st.get("m", 0.0) + (1 - b1) * g
    v = b2 * st.get("v", 0.0) + (1 - b2) * g * g

    def direction(m: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)

    u_l = direction(m, v)
    if gu is None:
        st["m"], st["v"] = m, v
        w = w - lr * u_l
    else:
        phi = (u_l * gu > 0).astype(float)
        phibar = phi / _clamp_scale(phi)
        masked = gu * (phi if rd["refine_mask"] == "binary" else phibar)
        m2, v2 = m + (1 - b1) * masked, v + (1 - b2) * masked**2
        u = direction(m2, v2)
        second = u - u_l if rd["second_term"] == "increment" else u
        w = w - lr * u_l - lr * phibar * second
        st["m"], st["v"] = (m2, v2) if rd["persist_refinement"] else (m, v)
    return w - lr * gamma * w if decoupled else w


def _grads(steps: int, seed: int, *, drop_u: bool = False) -> list[tuple[list[Any], list[Any]]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        gl = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        gu = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        out.append((gl, [None] * len(SHAPES) if drop_u and k % 3 == 1 else gu))
    return out


def _run(name: str, mode: str, reading: dict[str, Any], hyper: dict[str, Any],
         grads: list[tuple[list[Any], list[Any]]]) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
              for s in SHAPES]
    ref = [p.detach().numpy().copy() for p in params]
    opt = build_optimizer(name, params, **hyper, **reading, **MODES[mode])
    states: list[dict[str, Any]] = [{} for _ in params]
    for k, (gls, gus) in enumerate(grads):
        lr = LRS[k % len(LRS)]
        opt.param_groups[0]["lr"] = lr
        opt.step_two_source(gls, gus)
        for i, (gl, gu) in enumerate(zip(gls, gus, strict=True)):
            gu_np = None if gu is None else gu.numpy()
            if name == "sgd-hco":
                ref[i] = sgd_hco_reference(ref[i], gl.numpy(), gu_np, states[i], lr,
                                           hyper["momentum"], hyper["weight_decay"], reading)
            else:
                ref[i] = adam_hco_reference(ref[i], gl.numpy(), gu_np, states[i], lr,
                                            name == "adamw-hco", hyper, reading)
    return params, ref


def _assert_close(params: list[torch.Tensor], ref: list[np.ndarray]) -> None:
    for p, w in zip(params, ref, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("reading", SGD_READINGS, ids=lambda r: "-".join(map(str, r.values())))
def test_sgd_hco_readings_match_reference(reading: dict[str, Any], mode: str) -> None:
    hyper = {"momentum": 0.8, "weight_decay": 0.05}
    params, ref = _run("sgd-hco", mode, reading, hyper, _grads(7, 3, drop_u=True))
    _assert_close(params, ref)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["adam-hco", "adamw-hco"])
@pytest.mark.parametrize("reading", ADAM_READINGS, ids=lambda r: "-".join(map(str, r.values())))
def test_adam_hco_readings_match_reference(reading: dict[str, Any], name: str, mode: str) -> None:
    hyper = {"betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05}
    params, ref = _run(name, mode, reading, hyper, _grads(7, 4, drop_u=True))
    _assert_close(params, ref)


def test_readings_differ_from_the_printed_step() -> None:
    """Each reading changes the trajectory (the reference is not blind to an option)."""
    hyper = {"momentum": 0.8, "weight_decay": 0.05}
    printed = {"refine_mask": "scaled", "second_term": "refined", "persist_refinement": True,
               "double_decay": True}
    base, _ = _run("sgd-hco", "foreach", printed, hyper, _grads(4, 3))
    for change in ({"refine_mask": "binary"}, {"persist_refinement": False},
                   {"double_decay": False}, {"double_decay": False, "second_term": "increment"}):
        other, _ = _run("sgd-hco", "foreach", {**printed, **change}, hyper, _grads(4, 3))
        assert not torch.allclose(base[0], other[0]), change


def test_increment_with_zero_unlabeled_gradient_is_the_base_step() -> None:
    """R3's defining property: a zero g_U leaves exactly the labeled (plain) step."""
    gen = torch.Generator().manual_seed(0)
    w0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    gl = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    for name, extra in (("sgd-hco", {"double_decay": False}), ("adamw-hco", {})):
        a = [w.clone().requires_grad_() for w in w0]
        b = [w.clone().requires_grad_() for w in w0]
        hco = build_optimizer(name, a, second_term="increment", **extra)
        hco.step_two_source(gl, [torch.zeros_like(g) for g in gl])
        labeled_only = build_optimizer(name, b, **extra)
        labeled_only.step_two_source(gl, [None] * len(gl))
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-15)


@pytest.mark.parametrize("options, message", [
    ({"second_term": "increment"}, "needs double_decay=False"),
    ({"refine_mask": "half"}, "Invalid refine_mask"),
    ({"second_term": "all"}, "Invalid second_term"),
    ({"persist_refinement": "no"}, "Invalid persist_refinement"),
    ({"unlabeled_scale": 0.0}, "Invalid unlabeled_scale"),
    ({"decoupled_weight_decay": True}, "do not apply to optimizer .sgd-hco."),
])
def test_contradictions_are_refused_in_one_line(options: dict[str, Any], message: str) -> None:
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(HyperparameterError, match=message):
        build_optimizer("sgd-hco", p, **options)


def test_reading_options_are_refused_for_plain_and_co() -> None:
    p = [torch.zeros(3, requires_grad=True)]
    for name in ("sgd", "sgd-co", "adamw", "adam-co"):
        with pytest.raises(HyperparameterError, match=r"do not apply|only to the hco"):
            build_optimizer(name, p, refine_mask="binary")


def test_fused_refuses_a_non_printed_reading() -> None:
    p = [torch.zeros(1024, requires_grad=True)]
    with pytest.raises(HyperparameterError, match="printed reading only"):
        build_optimizer("sgd-hco", p, flat=True, fused=True, persist_refinement=False)
    opt = build_optimizer("adamw-hco", p, flat=True, refine_mask="scaled")  # fused=None: torch
    assert not opt.fused


@pytest.mark.parametrize("mode", list(MODES))
def test_unlabeled_scale_matches_scaled_gradients(mode: str) -> None:
    """unlabeled_scale=c steps exactly as the unscaled optimizer given c * g_U."""
    for name in ("sgd", "sgd-hco", "adamw-hco"):
        grads = _grads(3, 7)
        a = [torch.ones(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
        b = [torch.ones(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
        scaled = build_optimizer(name, a, unlabeled_scale=1e-6, **MODES[mode])
        manual = build_optimizer(name, b, **MODES[mode])
        for gl, gu in grads:
            scaled.step_two_source(gl, gu)
            manual.step_two_source(gl, [g * 1e-6 for g in gu])
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ["sgd", "sgd-co"])
def test_decoupled_weight_decay_for_plain_sgd(name: str) -> None:
    """w <- w (1 - lr gamma) before the momentum step on g (no L2 term in g)."""
    lr, mu, gamma = 0.1, 0.9, 0.05
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = build_optimizer(name, [w], lr=lr, momentum=mu, weight_decay=gamma,
                          decoupled_weight_decay=True, foreach=False)
    ref, buf = np.array([1.0, -2.0, 0.5]), None
    for g in ([0.3, 0.2, -0.1], [0.1, -0.4, 0.2]):
        opt.step_two_source([torch.tensor(g, dtype=torch.float64)], [None])
        ref = ref * (1 - lr * gamma)
        buf = np.array(g) if buf is None else mu * buf + np.array(g)
        scale = 1.0
        if name == "sgd-co":
            phi = (buf * np.array(g) > 0).astype(float)
            scale = phi / max(phi.mean(), 1e-3)
        ref = ref - lr * buf * scale
    np.testing.assert_allclose(w.detach().numpy(), ref, rtol=1e-13)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sgd-hco", "adam-hco", "adamw-hco"])
def test_cuda_readings_in_flat_mode_match_reference(name: str) -> None:
    """Every reading of the family on CUDA (flat float64, the default mode there) against the
    NumPy reference; diagnostics on a step come out finite."""
    readings = SGD_READINGS if name == "sgd-hco" else ADAM_READINGS
    hyper = ({"momentum": 0.8, "weight_decay": 0.05} if name == "sgd-hco" else
             {"betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05})
    for reading in readings:
        gen = torch.Generator().manual_seed(5)
        params = [torch.randn(s, generator=gen, dtype=torch.float64).cuda().requires_grad_()
                  for s in SHAPES]
        ref = [p.detach().cpu().numpy().copy() for p in params]
        opt = build_optimizer(name, params, **hyper, **reading)
        assert opt.flat
        states: list[dict[str, Any]] = [{} for _ in params]
        for k, (gls, gus) in enumerate(_grads(5, 4)):
            lr = LRS[k % len(LRS)]
            opt.param_groups[0]["lr"] = lr
            opt.diagnose = k == 2
            opt.step_two_source([g.cuda() for g in gls], [g.cuda() for g in gus])
            for i, (gl, gu) in enumerate(zip(gls, gus, strict=True)):
                if name == "sgd-hco":
                    ref[i] = sgd_hco_reference(ref[i], gl.numpy(), gu.numpy(), states[i], lr,
                                               hyper["momentum"], hyper["weight_decay"], reading)
                else:
                    ref[i] = adam_hco_reference(ref[i], gl.numpy(), gu.numpy(), states[i], lr,
                                                name == "adamw-hco", hyper, reading)
            if k == 2:
                diag = opt.take_diagnostics()
                assert diag is not None and all(torch.isfinite(v) for v in diag.values())
        for p, w in zip(params, ref, strict=True):
            np.testing.assert_allclose(p.detach().cpu().numpy(), w, rtol=1e-10, atol=1e-12)
