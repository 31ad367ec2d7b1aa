"""All nine optimizers against an independent float64 NumPy reference of the documented formulas."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from hco_cli.optim import OPTIMIZER_NAMES, build_optimizer, optimizer_info

SHAPES = [(4, 3, 2), (7,), (3, 5)]
LRS = [0.05, 0.03, 0.02, 0.01, 0.004, 0.002]
HYPER: dict[str, dict[str, Any]] = {  # non-default values so that every term matters
    "sgd": {"momentum": 0.8, "weight_decay": 0.05},
    "adam": {"betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05},
    "adamw": {"betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05},
}
MASKED = [n for n in OPTIMIZER_NAMES if optimizer_info(n).variant != "plain"]


def _scale(phi: np.ndarray, norm: str, eps: float) -> float:
    if norm == "clamp":
        return max(phi.mean(), eps)
    if norm == "mean_eps":
        return phi.mean() + eps
    return (phi.sum() + 1.0) / phi.size


def _add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    if a is None or b is None:
        out = a if b is None else b
        assert out is not None
        return out
    return a + b


def _sgd(variant: str, w: np.ndarray, gl: Any, gu: Any, st: dict[str, Any], lr: float,
         hp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    mu, gamma, norm, eps = hp["momentum"], hp["weight_decay"], hp["norm"], hp["mask_eps"]
    if variant != "hco":
        g = _add(gl, gu) + gamma * w
        b = g.copy() if "b" not in st else mu * st["b"] + g
        st["b"] = b
        if variant == "plain":
            return w - lr * b, None
        phi = (b * g > 0).astype(float)
        return w - lr * b * phi / _scale(phi, norm, eps), phi
    gl = np.zeros_like(w) if gl is None else gl
    m = mu * st.get("b", 0.0) + gl
    m_l = m.copy()
    phi = None
    if gu is None:
        w = w - lr * m_l
    else:
        phi = (m_l * gu > 0).astype(float)
        phibar = phi / _scale(phi, norm, eps)
        m = (mu * m if hp["double_decay"] else m) + gu * phibar
        w = w - lr * m_l - lr * (m * phibar)
    st["b"] = m
    return w - lr * gamma * w, phi


def _adam(family: str, variant: str, w: np.ndarray, gl: Any, gu: Any, st: dict[str, Any],
          lr: float, hp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    (b1, b2), eps, gamma = hp["betas"], hp["eps"], hp["weight_decay"]
    norm, meps = hp["norm"], (eps if hp["mask_eps"] == "eps" else hp["mask_eps"])
    t = st["t"] = st.get("t", 0) + 1
    g = _add(gl, gu) if variant != "hco" else (np.zeros_like(w) if gl is None else gl)
    if family == "adam":
        g = g + gamma * w
    elif variant != "hco":
        w = w - lr * gamma * w
    m = b1 * st.get("m", 0.0) + (1 - b1) * g
    v = b2 * st.get("v", 0.0) + (1 - b2) * g * g

    def direction(m: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)

    u = direction(m, v)
    phi = None
    if variant == "plain" or (variant == "hco" and gu is None):
        w = w - lr * u
    elif variant == "co":
        phi = (m * g > 0).astype(float)
        w = w - lr * u * phi / _scale(phi, norm, meps)
    else:
        phi = (u * gu > 0).astype(float)
        m = m + (1 - b1) * (gu * phi)
        v = v + (1 - b2) * (gu * phi) ** 2
        w = w - lr * u - lr * (phi / _scale(phi, norm, meps)) * direction(m, v)
    if variant == "hco" and family == "adamw":
        w = w - lr * gamma * w
    st["m"], st["v"] = m, v
    return w, phi


def reference_step(name: str, w: np.ndarray, gl: Any, gu: Any, st: dict[str, Any], lr: float,
                   hp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """One step of ``name`` on one tensor; None for a parameter with no gradient at all."""
    info = optimizer_info(name)
    if info.family == "sgd":
        return _sgd(info.variant, w, gl, gu, st, lr, hp)
    return _adam(info.family, info.variant, w, gl, gu, st, lr, hp)


def _hyper(name: str, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kwargs for build_optimizer, resolved values for the reference)."""
    info = optimizer_info(name)
    kwargs = {**HYPER[info.family], **overrides}
    ref = {**info.defaults, **kwargs, "norm": kwargs.get("mask_norm", "clamp"),
           "mask_eps": kwargs.get("mask_eps", 1e-3),
           "double_decay": kwargs.get("double_decay", True)}
    return kwargs, ref


def run_both(name: str, grads: list[tuple[list[Any], list[Any]]], *, use_step: bool = False,
             **overrides: Any) -> tuple[list[torch.Tensor], list[np.ndarray], list[Any]]:
    """Step ours and the reference through ``grads`` with a changing LR; return both weights."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
              for s in SHAPES]
    ref_w = [p.detach().numpy().copy() for p in params]
    kwargs, hp = _hyper(name, **overrides)
    opt = build_optimizer(name, params, **kwargs)
    states: list[dict[str, Any]] = [{} for _ in params]
    log = []
    for step, (gls, gus) in enumerate(grads):
        lr = LRS[step % len(LRS)]
        opt.param_groups[0]["lr"] = lr
        if use_step:
            for p, g in zip(params, gls, strict=True):
                p.grad = None if g is None else g.clone()
            opt.step()
        else:
            opt.step_two_source(gls, gus)
        phis = []
        for i, (gl, gu) in enumerate(zip(gls, gus, strict=True)):
            if gl is None and gu is None:
                continue
            ref_w[i], phi = reference_step(
                name, ref_w[i], None if gl is None else gl.numpy(),
                None if gu is None else gu.numpy(), states[i], lr, hp)
            if phi is not None:
                phis.append(phi)
        expected = sum(p.sum() for p in phis) / sum(p.size for p in phis) if phis else None
        log.append((phis, expected, opt.last_alignment))
    return params, ref_w, log


def random_grads(steps: int, seed: int = 2) -> list[tuple[list[Any], list[Any]]]:
    gen = torch.Generator().manual_seed(seed)
    return [([torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES],
             [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES])
            for _ in range(steps)]


def _assert_weights(params: list[torch.Tensor], ref_w: list[np.ndarray]) -> None:
    for p, w in zip(params, ref_w, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_matches_reference_over_steps(name: str) -> None:
    params, ref_w, log = run_both(name, random_grads(6))
    _assert_weights(params, ref_w)
    variant = optimizer_info(name).variant
    for step, (phis, expected, got) in enumerate(log):
        if variant == "plain":
            assert got is None and not phis
            continue
        assert len(phis) == len(SHAPES)
        # CO's first mask is full by construction (the moment is a multiple of g).
        if step > 0 or variant == "hco":
            assert all(0 < phi.mean() < 1 for phi in phis), "masks must be neither empty nor full"
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["sgd-co", "sgd-hco", "adam-co", "adamw-hco"])
@pytest.mark.parametrize("mask", [{"mask_norm": "mean_eps", "mask_eps": 0.05},
                                  {"mask_norm": "count_plus_one"}, {"mask_eps": 0.7}])
def test_mask_normalisations_match_reference(name: str, mask: dict[str, Any]) -> None:
    # mask_eps 0.7 exceeds most mask means, so the clamp (not mean + eps) is exercised.
    params, ref_w, _ = run_both(name, random_grads(5), **mask)
    _assert_weights(params, ref_w)


@pytest.mark.parametrize("name", ["adam-co", "adamw-hco"])
def test_mask_eps_alias_reuses_adam_eps(name: str) -> None:
    params, ref_w, _ = run_both(name, random_grads(5), mask_eps="eps", eps=0.6)
    _assert_weights(params, ref_w)


def test_sgd_hco_single_decay_reading_differs_as_documented() -> None:
    grads = random_grads(5)
    double, ref_double, _ = run_both("sgd-hco", grads)
    single, ref_single, _ = run_both("sgd-hco", grads, double_decay=False)
    _assert_weights(double, ref_double)
    _assert_weights(single, ref_single)
    assert not np.allclose(ref_double[0], ref_single[0])
    # One step from m = 0: m^L = g_L; the buffer becomes mu g_L + g_U phibar (double decay)
    # or g_L + g_U phibar (single).
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    gl = torch.tensor([1.0, -1.0, 2.0, 0.5, -0.5, 1.0], dtype=torch.float64)
    gu = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    phibar = torch.tensor([1.0, 0, 1, 0, 1, 0], dtype=torch.float64) / 0.5
    for flag, m_expected in ((True, 0.9 * gl + gu * phibar), (False, gl + gu * phibar)):
        opt = build_optimizer("sgd-hco", [p], momentum=0.9, double_decay=flag)
        opt.step_two_source([gl], [gu])
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], m_expected)
        assert opt.last_alignment == 0.5
        p.data.zero_()


def _missing_pattern(steps: int) -> list[tuple[list[Any], list[Any]]]:
    """Per step: tensor 0 both sources, 1 only g_L, 2 only g_U (from step 2 on both)."""
    out = random_grads(steps, seed=5)
    for i, (gls, gus) in enumerate(out):
        gus[1] = None
        if i < 2:
            gls[2] = None
    return out


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_one_sided_gradients_match_reference(name: str) -> None:
    params, ref_w, log = run_both(name, _missing_pattern(5))
    _assert_weights(params, ref_w)
    for _, expected, got in log:
        assert got == (None if expected is None else pytest.approx(expected, abs=1e-12))


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_step_uses_p_grad_as_labeled_gradient(name: str) -> None:
    grads = [(gls, [None] * len(gus)) for gls, gus in random_grads(5)]
    params, ref_w, log = run_both(name, grads, use_step=True)
    _assert_weights(params, ref_w)
    if optimizer_info(name).variant == "hco":  # the labeled-only step masks nothing
        assert all(got is None for _, _, got in log)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_plain_variants_match_torch(name: str) -> None:
    torch_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    kwargs, _ = _hyper(name)
    for foreach in (False, True):
        gen = torch.Generator().manual_seed(3)
        ours = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
                for s in SHAPES]
        theirs = [p.detach().clone().requires_grad_() for p in ours]
        opt = build_optimizer(name, ours, foreach=foreach, **kwargs)
        ref = torch_cls[name](theirs, foreach=foreach, **kwargs)
        for step, (gls, gus) in enumerate(random_grads(6)):
            for group in (*opt.param_groups, *ref.param_groups):
                group["lr"] = LRS[step]
            opt.step_two_source(gls, gus)
            for p, a, b in zip(theirs, gls, gus, strict=True):
                p.grad = a + b
            ref.step()
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
