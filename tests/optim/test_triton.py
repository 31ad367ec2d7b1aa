"""Fused Triton hco steps: equal to the torch flat path, gaps inert, dispatch and refusals.

The CPU tests run the kernels through Triton's interpreter in one child process (this file run
as a script with TRITON_INTERPRET=1, which must be set before the kernels are defined), so that
the interpreter never leaks into the rest of the session; the parent runs the torch flat path
and compares. The gpu-marked test runs the compiled kernels in-process on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch

from hco_cli.optim import HyperparameterError, build_optimizer
from hco_cli.optim.flat import ALIGN, FlatLayout

HAS_TRITON = find_spec("triton") is not None
# A channels-last 5-D weight, its bias, a 1-element tensor, a 2-D tensor and one of three blocks.
SHAPES = [(4, 3, 2, 3, 2), (4,), (1,), (7, 5), (2100,)]
NORMS = ("clamp", "mean_eps", "count_plus_one")
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"sgd-hco-{n}-double{d}": ("sgd-hco", {"mask_norm": n, "double_decay": d})
       for n in NORMS for d in (True, False)},
    **{f"{name}-{n}": (name, {"mask_norm": n}) for name in ("adam-hco", "adamw-hco")
       for n in NORMS},
    "adamw-hco-eps-alias": ("adamw-hco", {"mask_eps": "eps", "eps": 1e-2}),
    "adam-hco-small-beta1": ("adam-hco", {"betas": (0.3, 0.99)}),  # torch's other lerp branch
}
RESUMED = ("sgd-hco-clamp-doubleTrue", "adamw-hco-clamp")
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _params(device: str = "cpu", shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = [torch.randn(s, generator=gen) for s in shapes]
    out[0] = out[0].contiguous(memory_format=torch.channels_last_3d)
    return [p.to(device).requires_grad_() for p in out]


def _sources(step: int, params: list[torch.Tensor]) -> tuple[list[Any], list[Any]]:
    """Both sources; step 2 has no g_L at all, step 3 misses a tensor in each, step 4 no g_U."""
    gen = torch.Generator().manual_seed(500 + step)
    gl: list[Any] = [torch.randn(p.shape, generator=gen).to(p.device) for p in params]
    gu: list[Any] = [torch.randn(p.shape, generator=gen).to(p.device) for p in params]
    if step == 2:
        gl = [None] * len(params)
    if step == 3:
        gl[1], gu[2] = None, None
    if step == 4:
        gu = [None] * len(params)
    return gl, gu


def run_case(key: str, *, fused: bool, device: str = "cpu",
             shapes: list[tuple[int, ...]] = SHAPES, resume: bool = False) -> dict[str, Any]:
    """Six steps of one case; the final parameters, state, flat buffers and alignments.

    ``resume``: after three steps, continue with a new optimizer loaded from the state_dict.
    """
    name, options = CASES[key]
    params = _params(device, shapes)

    def build() -> Any:
        opt = build_optimizer(name, params, weight_decay=0.01, flat=True, fused=fused, **options)
        assert opt.flat and opt.fused == fused
        return opt

    opt = build()
    alignment = []
    diagnostics: dict[str, float] = {}
    for step in range(6):
        if resume and step == 3:
            saved = opt.state_dict()
            opt = build()
            opt.load_state_dict(saved)
        opt.param_groups[0]["lr"] = 0.05 / (1 + step)
        opt.diagnose = step == 1  # a step with both sources: the per-tensor counts too
        opt.step_two_source(*_sources(step, params))
        alignment.append(opt.last_alignment)
        if step == 1:
            diagnostics = {k: float(v) for k, v in opt.take_diagnostics().items()}
    layout = opt._flat
    assert layout is not None
    state = opt.state_dict()["state"]
    return {"params": [p.detach().cpu() for p in params], "alignment": alignment,
            "diagnostics": diagnostics,
            "state": {f"{i}.{k}": v.cpu() for i in state for k, v in state[i].items()
                      if isinstance(v, torch.Tensor)},
            "buffers": [layout.data.cpu(), *(b.cpu() for b in opt._flat_state.values())]}


def _gaps(shapes: list[tuple[int, ...]]) -> torch.Tensor:
    """True at the padding elements of the flat layout of ``shapes``."""
    layout = FlatLayout([torch.zeros(s) for s in shapes])
    used = torch.zeros(layout.size, dtype=torch.bool)
    for offset, numel in zip(layout.offsets, layout.numels, strict=True):
        used[offset:offset + numel] = True
    return ~used


def _compare(ref: dict[str, Any], got: dict[str, Any], shapes: list[tuple[int, ...]]) -> None:
    for x, y in zip(ref["params"], got["params"], strict=True):
        torch.testing.assert_close(y, x, **TOL)
    assert ref["state"].keys() == got["state"].keys()
    for key, value in ref["state"].items():
        torch.testing.assert_close(got["state"][key], value, **TOL)
    assert got["alignment"][4] is None and ref["alignment"][4] is None  # no g_U: no mask
    assert got["alignment"] == pytest.approx(ref["alignment"], abs=1e-12)
    assert ref["diagnostics"].keys() == got["diagnostics"].keys()
    for key, value in ref["diagnostics"].items():  # the fused per-tensor counts included
        assert got["diagnostics"][key] == pytest.approx(value, rel=1e-5), key
    gaps = _gaps(shapes)
    for buffer in got["buffers"]:
        assert not buffer[gaps].any()


@pytest.fixture(scope="module")
def interpreted_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """All cases' fused results, computed once by this file run as an interpreter child."""
    out = tmp_path_factory.mktemp("triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(torch.load(out))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("key", list(CASES))
def test_interpreted_kernels_equal_the_torch_flat_path(
        key: str, interpreted_results: dict[str, Any]) -> None:
    """Six fp32 steps (missing sources included): parameters, state, alignments, gaps."""
    _compare(run_case(key, fused=False), interpreted_results[key], SHAPES)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("key", RESUMED)
def test_interpreted_fused_state_resumes(key: str, interpreted_results: dict[str, Any]) -> None:
    """A fused optimizer rebuilt from its state_dict after 3 steps continues as the torch path."""
    _compare(run_case(key, fused=False), interpreted_results[f"{key}+resume"], SHAPES)


def test_layout_blocks_never_straddle_two_tensors() -> None:
    layout = FlatLayout([torch.zeros(s) for s in SHAPES])
    assert all(o % ALIGN == 0 for o in layout.offsets) and layout.size % ALIGN == 0
    expected = [i for i, n in enumerate(layout.numels) for _ in range(-(-n // ALIGN))]
    assert layout.block_segments.dtype == torch.int32
    assert layout.block_segments.tolist() == expected


def test_fused_dispatch_and_refusals() -> None:
    cpu = [torch.zeros(3, requires_grad=True)]
    assert not build_optimizer("sgd-hco", cpu, flat=True).fused  # None: only on CUDA
    assert not build_optimizer("adamw-hco", cpu, flat=True, fused=False).fused
    for name in ("sgd", "adam-co"):
        with pytest.raises(HyperparameterError, match="only for the hco variants"):
            build_optimizer(name, [torch.zeros(3, requires_grad=True)], flat=True, fused=True)
    with pytest.raises(HyperparameterError, match="need flat mode"):
        build_optimizer("sgd-hco", [torch.zeros(3, requires_grad=True)], fused=True)
    with pytest.raises(HyperparameterError, match="Invalid fused: 'yes'"):
        build_optimizer("sgd-hco", [torch.zeros(3, requires_grad=True)], fused="yes")
    double = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    with pytest.raises(HyperparameterError, match=r"float32 parameters, not torch\.float64"):
        build_optimizer("adam-hco", double, flat=True, fused=True)
    assert double[0].untyped_storage().size() == 3 * 8  # refused before re-homing


def test_fused_true_on_cpu_needs_triton_and_its_interpreter() -> None:
    params = [torch.zeros(3, requires_grad=True)]
    if not HAS_TRITON:
        with pytest.raises(HyperparameterError, match="need triton"):
            build_optimizer("sgd-hco", params, flat=True, fused=True)
        return
    from hco_cli.optim import triton_step
    if triton_step.interpreted():  # the whole session runs under TRITON_INTERPRET=1
        assert build_optimizer("sgd-hco", params, flat=True, fused=True).fused
        return
    with pytest.raises(HyperparameterError, match="interpreter"):
        build_optimizer("sgd-hco", params, flat=True, fused=True)


def _triton_at_least(major: int, minor: int) -> bool:
    import triton
    return tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (major, minor)


@pytest.mark.skipif(not HAS_TRITON or not _triton_at_least(3, 9),
                    reason="needs triton >= 3.9 (its ahead-of-time compile API)")
@pytest.mark.parametrize("has_u", [True, False])
@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_kernels_compile_for_an_h100(family: str, has_u: bool) -> None:
    """Compile for sm_90 without a GPU (Triton's bundled ptxas): IEEE division and square root,
    16-byte accesses where the pointers are 16-byte aligned, one atomic per block."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hco_cli.optim import triton_step as ts
    if ts.interpreted():
        pytest.skip("this session runs Triton's interpreter")
    flags = {"HAS_L": True, "BLOCK": ts.BLOCK}
    if family == "adam":
        flags |= {"L2": True, "LERP_SMALL": True}
    kernels = {"mask": getattr(ts, f"_{family}_mask_kernel"),
               "apply": getattr(ts, f"_{family}_apply_kernel")}
    extra = {"HAS_U": has_u, "NORM": 0, "SEG_BLOCK": ts.SEG_BLOCK}
    if family == "sgd":
        extra["DOUBLE_DECAY"] = True
    ptx = {}
    for which, kernel in kernels.items():
        if which == "mask" and not has_u:
            continue
        consts = flags | (extra if which == "apply" else {})
        names = kernel.arg_names
        signature = {a: "constexpr" if a in consts else "*i32" if a in (
            "seg_ptr", "counts_ptr", "next_counts_ptr") else "*fp64" if a == "total_ptr"
            else "*fp32" if a.endswith("_ptr") else "i32" if a in ("n", "n_seg") else "fp32"
            for a in names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(names)
                 if a.endswith("_ptr") or a == "n"}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32), options=dict(ts.LAUNCH))
        ptx[which] = compiled.asm["ptx"]
    if has_u:
        assert ptx["mask"].count("red.global") + ptx["mask"].count("atom.global") == 1
        assert "ld.global.v4" in ptx["mask"] and "st.global.v4" in ptx["mask"]
    text = ptx["apply"]
    assert "ld.global.v4" in text and "st.global.v4" in text
    assert "approx" not in text and "div.full" not in text
    if family == "adam":
        assert "div.rn.f32" in text and "sqrt.rn.f32" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("key", list(CASES))
def test_cuda_fused_is_the_default_and_equals_the_torch_flat_path(key: str) -> None:
    """Compiled kernels; a tensor of 32 blocks makes many atomics meet on one counter."""
    shapes = [*SHAPES, (40, 30, 3, 3, 3)]
    name, options = CASES[key]
    default = build_optimizer(name, _params("cuda", shapes), **options)
    assert default.flat and default.fused
    ref = run_case(key, fused=False, device="cuda", shapes=shapes)
    _compare(ref, run_case(key, fused=True, device="cuda", shapes=shapes), shapes)


def _child(out: Path) -> None:
    """Run every case fused (under TRITON_INTERPRET=1) and save the results for the parent."""
    results = {key: run_case(key, fused=True) for key in CASES}
    results |= {f"{key}+resume": run_case(key, fused=True, resume=True) for key in RESUMED}
    torch.save(results, out)
    print(json.dumps(sorted(results)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
