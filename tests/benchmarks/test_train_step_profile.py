"""benchmarks/train_step.py --profile: the kernel categories on known CUDA kernel names, the
summary of constructed CUDA profiler events (stages, CUDA-graph replays, annotations), and
short CPU runs of the script that profile 2 and 4 iterations."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from hco_cli.models import ModelConfig
from hco_cli.models.vnet import build_model
from hco_cli.ssl.bcp import teacher_batches
from tests.benchmarks.scripts import load_benchmark

ts = load_benchmark("train_step")

# Realistic names as the profiler reports them on an H100/H200 (demangled, cuDNN 9, torch 2.x
# eager with channels_last_3d and bf16, Inductor, this project's Triton step, CuPy's label).
KNOWN_KERNELS = {
    "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_ndhwc_kernel_trs_32x1x1_cta_tile"
    "_128x64x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cudnn": "conv forward",
    "void cudnn::detail::implicit_convolveNd_sgemm<__nv_bfloat16, 3, 1024, 6, 7, 3, 3, 5, "
    "false, false, true>(int, int, int, __nv_bfloat16 const*, int, __nv_bfloat16*, "
    "__nv_bfloat16 const*, kernel_convNd_params, unsigned long long, int, float, float, int, "
    "__nv_bfloat16 const*, __nv_bfloat16 const*)": "conv forward",
    "cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_64x64_64x5"
    "_nhwc_align8>(cutlass_tensorop_bf16_s16816fprop_optimized_bf16_64x64_64x5_nhwc_align8"
    "::Params)": "conv forward",
    "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_ndhwc_kernel_trs_32x1x1_cta_tile"
    "_128x64x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cudnn":
        "conv backward data",
    "void cudnn::detail::dgrad_engine<float, 128, 6, 7, 3, 3, 5, true>(int, int, int, float "
    "const*, int, float const*, int, float*, kernel_grad_params, unsigned long long, int, "
    "unsigned long long, int, float, int, int, int)": "conv backward data",
    "sm80_xmma_wgrad_implicit_gemm_indexed_wo_smem_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize"
    "128x128x32_stage1_warpsize2x2x1_g1_tensor16x8x16_execute_kernel__5x_cudnn":
        "conv backward weight",
    "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, "
    "false, false>(cublasSplitKParams<float>, float const*, __nv_bfloat16 const*, "
    "__nv_bfloat16*, float const*, float const*, __nv_bfloat16 const*, float const*, "
    "__nv_bfloat16*, void*, long, float*, int*)": "conv backward weight",
    "void cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float, 512, true, 1>("
    "cudnnTensorStruct, __nv_bfloat16 const*, cudnnTensorStruct, __nv_bfloat16*, float "
    "const*, float const*, float, float, float*, float*, float*, float*, float, float)":
        "batch/instance norm",
    "void cudnn::bn_bw_1C11_kernel_new<__nv_bfloat16, float, float2, 512, true, 1>("
    "__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, __nv_bfloat16, cudnnTensorStruct, "
    "__nv_bfloat16 const*, cudnnTensorStruct, __nv_bfloat16 const*, cudnnTensorStruct, "
    "__nv_bfloat16*, float const*, float*, float*, float const*, float const*, float)":
        "batch/instance norm",
    "void at::native::batch_norm_collect_statistics_channels_last_kernel<at::native::Var, "
    "c10::BFloat16, float, 4>(c10::BFloat16 const*, float*, float*, volatile float*, int*, "
    "int, int)": "batch/instance norm",
    "void at::native::batch_norm_backward_elemt_channels_last_kernel<4, c10::BFloat16, float, "
    "float>(c10::BFloat16 const*, c10::BFloat16 const*, float const*, float const*, float "
    "const*, float const*, float const*, float const*, c10::BFloat16*, int const*, int, int)":
        "batch/instance norm",
    "triton_poi_fused__native_batch_norm_legit_functional_convolution_relu_3":
        "batch/instance norm",
    "triton_red_fused__native_batch_norm_legit_functional_native_batch_norm_backward_"
    "threshold_backward_12": "batch/instance norm",
    "triton_poi_fused_add_relu_threshold_backward_7": "elementwise/reduction",
    "triton_red_fused_convolution_backward_sum_2": "elementwise/reduction",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<"
    "c10::BFloat16>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "std::array<char*, 3ul>)": "elementwise/reduction",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<"
    "float, float, float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, "
    "at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4>)":
        "elementwise/reduction",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
    "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)":
        "softmax/loss",
    "void at::native::(anonymous namespace)::nll_loss2d_forward_kernel<float, float, long>("
    "float*, float*, float*, long*, float*, int, int, int, int, int, long)": "softmax/loss",
    "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda("
    "at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#10}::operator()() "
    "const::{lambda(float)#1}, std::array<char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned "
    "int>, TrivialOffsetCalculator<1, unsigned int>, at::native::memory::LoadWithCast<1>, "
    "at::native::memory::StoreWithCast<1> >(int, at::native::direct_copy_kernel_cuda("
    "at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#10}::operator()() "
    "const::{lambda(float)#1}, std::array<char*, 2ul>, TrivialOffsetCalculator<1, unsigned "
    "int>, TrivialOffsetCalculator<1, unsigned int>, at::native::memory::LoadWithCast<1>, "
    "at::native::memory::StoreWithCast<1>)": "copy/memset/cast",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
    "std::array<char*, 1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)":
        "copy/memset/cast",
    "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, "
    "false, true, (cudnnKernelDataType_t)0>(cudnn::engines_precompiled::nchw2nhwc_params_t"
    "<float>, __nv_bfloat16 const*, __nv_bfloat16*)": "copy/memset/cast",
    "Memcpy HtoD (Pageable -> Device)": "copy/memset/cast",
    "Memset (Device)": "copy/memset/cast",
    "cupyx_scipy_ndimage_label_init": "connected components",
    "cupyx_scipy_ndimage_label_connect": "connected components",
    "cupyx_scipy_ndimage_label_finalize": "connected components",
    "_merge_kernel": "connected components",  # the Triton union-find (hco_cli/ops/ccl_triton)
    "_flatten_kernel": "connected components",
    "void at::cuda::kernelHistogram1D<float, float, long, 1, 2, -1, "
    "(at::cuda::CUDAHistogramMemoryType)1, at::cuda::detail::CUDAHistogramMemoryType>(...)":
        "connected components",
    "_sgd_mask_kernel": "optimizer",
    "_sgd_apply_kernel": "optimizer",
    "_adam_apply_kernel": "optimizer",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
    "namespace)::TensorListMetadata<3>, at::native::(anonymous namespace)::FusedSgdMathFunctor"
    "<float, 3>, double, float*, bool, bool, bool, float const*, float const*>(...)":
        "optimizer",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
    "namespace)::TensorListMetadata<2>, at::native::(anonymous namespace)::BinaryOpListAlpha"
    "Functor<float, 2, 2, 0>, std::plus<float>, float>(...)": "optimizer",
    "void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float, "
    "unsigned int, 1, 4, bool>(...)": "elementwise/reduction",
    "some_kernel_nobody_named_yet": "other",
}


def test_the_category_table_classifies_known_kernel_names() -> None:
    got = {name: ts.categorize(name) for name in KNOWN_KERNELS}
    wrong = {name[:60]: (got[name], want) for name, want in KNOWN_KERNELS.items()
             if got[name] != want}
    assert not wrong
    # every category of the table is printed, once; every printed one is in the table
    assert sorted(ts.CATEGORY_NAMES) == sorted({row[0] for row in ts.KERNEL_CATEGORIES})
    assert ts.KERNEL_CATEGORIES[-1] == ("other", None, None)


def test_the_launching_stage_decides_where_names_do_not() -> None:
    add = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>,"
           " std::array<char*, 3ul> >(...)")
    foreach = "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>(...)"
    assert ts.categorize(add, "optimizer step") == "optimizer"  # the flat torch step
    assert ts.categorize(add, "backward") == "elementwise/reduction"
    assert ts.categorize(foreach, "ema") == "ema"  # the teacher's foreach update
    assert ts.categorize(foreach, None) == "optimizer"
    histogram = "void at::cuda::kernelHistogram1D<float, float, long, 1, 2, -1>(...)"
    assert ts.categorize(histogram, "connected components") == "connected components"
    # CPU op names
    assert ts.categorize("aten::mkldnn_convolution", "forward+loss") == "conv forward"
    assert ts.categorize("aten::convolution_backward") == "conv backward data+weight"
    assert ts.categorize("aten::native_batch_norm_backward") == "batch/instance norm"
    assert ts.categorize("aten::_log_softmax_backward_data") == "softmax/loss"
    assert ts.categorize("aten::clamp_min_") == "elementwise/reduction"
    assert ts.categorize("aten::new_empty") == "other"
    assert ts.categorize("autograd::engine::evaluate_function: ConvolutionBackward0") == "other"


CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def event(name: str, start: float, end: float, *, device: Any = CPU, cid: int = 0,
          activity: str = "", user: bool = False) -> SimpleNamespace:
    """The fields of a torch FunctionEvent that the summary reads (times in µs); ``user``: a
    record_function range of user scope."""
    return SimpleNamespace(name=name, device_type=device, id=cid, activity_type=activity,
                           time_range=SimpleNamespace(start=start, end=end),
                           is_user_annotation=user or name.startswith(ts.STAGE_PREFIX),
                           is_python_function=False, self_cpu_time_total=end - start)


def cuda_events(*, graph_kernels: bool) -> list[SimpleNamespace]:
    """One iteration's worth of events, profiled "twice" (two iterations)."""
    stage = ts.STAGE_PREFIX
    events = []
    for it in range(2):
        h, d, c = 1000.0 * it, 5000.0 + 1000.0 * it, 100 * it  # host, device time, ids
        events += [
            event(stage + "forward+loss", h, h + 100), event(stage + "pseudo-labels", h, h + 40),
            event(stage + "connected components", h + 30, h + 40),
            event(stage + "backward", h + 100, h + 200),
            event(stage + "optimizer step", h + 180, h + 200), event(stage + "ema", h + 200,
                                                                      h + 210),
            event("aten::convolution", h + 1, h + 5, cid=7 + c),
            event("## Call CompiledFxGraph fabc ##", h + 50, h + 60, user=True),
            # launch calls on the host and what they ran on the device
            event("cudaLaunchKernel", h + 2, h + 3, cid=1 + c),
            event("sm90_xmma_fprop_implicit_gemm_bf16", d, d + 10, device=CUDA, cid=1 + c,
                  activity="kernel"),
            event("cuLaunchKernel", h + 32, h + 33, cid=2 + c),
            event("cupyx_scipy_ndimage_label_init", d + 10, d + 12, device=CUDA, cid=2 + c),
            event("cudaLaunchKernel", h + 35, h + 36, cid=3 + c),
            event("void at::cuda::kernelHistogram1D<float>(...)", d + 12, d + 13, device=CUDA,
                  cid=3 + c),
            event("cudaGraphLaunch", h + 50, h + 51, cid=4 + c),  # forward+loss
            event("cudaGraphLaunch", h + 120, h + 121, cid=5 + c),  # backward, never resolved
            # Inductor's range around its Triton kernel's launch shares the kernel's name
            event("triton_poi_fused_add_relu_7", h + 55, h + 58),
            event("cuLaunchKernel", h + 56, h + 57, cid=12 + c),
            event("triton_poi_fused_add_relu_7", d + 13, d + 14, device=CUDA, cid=12 + c),
            event("cudaLaunchKernel", h + 60, h + 61, cid=10 + c),
            event("void at::native::reduce_kernel<512, 1>(...)", d + 30, d + 40, device=CUDA,
                  cid=10 + c),  # overlaps the graph's fprop (another stream)
            event("cudaLaunchKernel", h + 150, h + 151, cid=6 + c),
            event("sm90_xmma_wgrad_implicit_gemm_bf16", d + 40, d + 60, device=CUDA, cid=6 + c),
            event("cudaLaunchKernel", h + 185, h + 186, cid=8 + c),
            event("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>", d + 60,
                  d + 62, device=CUDA, cid=8 + c),
            event("cudaLaunchKernel", h + 205, h + 206, cid=9 + c),
            event("void at::native::multi_tensor_apply_kernel<...>", d + 62, d + 64,
                  device=CUDA, cid=9 + c),
            event("cudaMemcpyAsync", h + 250, h + 251, cid=11 + c),
            event("Memcpy HtoD (Pageable -> Device)", d - 10, d - 8, device=CUDA, cid=11 + c,
                  activity="gpu_memcpy"),
            # a kernel whose launch call is not in the profile
            event("cupyx_scipy_ndimage_label_connect", d + 64, d + 66, device=CUDA, cid=99 + c),
            # device-side copies of record_function ranges: not work
            event(stage + "forward+loss", d, d + 40, device=CUDA, activity="gpu_user_annotation"),
            event("## Call CompiledFxGraph fabc ##", d + 20, d + 35, device=CUDA),
        ]
        if graph_kernels:
            events += [
                event("triton_poi_fused__native_batch_norm_legit_functional_convolution_relu_3",
                      d + 20, d + 25, device=CUDA, cid=4 + c),
                event("sm90_xmma_fprop_implicit_gemm_bf16", d + 25, d + 35, device=CUDA,
                      cid=4 + c)]
    return events


def test_summary_of_cuda_events_per_iteration() -> None:
    found, counts = ts.profile_activities(cuda_events(graph_kernels=True), cuda=True)
    s = ts.profile_summary(found, counts, iterations=2, cuda=True, measured_ms=0.2,
                           profiled_ms=0.25)
    # per iteration: 10+2+1+1+10+20+2+2+2 us of kernels, a memcpy of 2, 5+10 in the graph
    assert s["total_ms"] == pytest.approx(0.067)
    assert sum(c["ms"] for c in s["categories"].values()) == pytest.approx(s["total_ms"])
    assert sum(c["percent"] for c in s["categories"].values()) == pytest.approx(100.0)
    assert sum(c["ms"] for c in s["stages"].values()) == pytest.approx(s["total_ms"])
    # the union: [-10, -8], [0, 14], [20, 66]
    assert s["busy_ms"] == pytest.approx(0.062)
    assert s["busy_fraction"] == pytest.approx(0.062 / 0.2)
    ms = {k: v["ms"] for k, v in s["categories"].items()}
    assert ms["conv forward"] == pytest.approx(0.020)
    assert ms["conv backward weight"] == pytest.approx(0.020)
    assert ms["batch/instance norm"] == pytest.approx(0.005)
    assert ms["connected components"] == pytest.approx(0.005)  # label x2 + its histogram
    assert ms["optimizer"] == pytest.approx(0.002) and ms["ema"] == pytest.approx(0.002)
    assert ms["elementwise/reduction"] == pytest.approx(0.011)  # Triton kernel counted
    assert ms["copy/memset/cast"] == pytest.approx(0.002)
    stages = {k: v["ms"] for k, v in s["stages"].items()}
    assert stages == pytest.approx({"pseudo-labels": 0.010, "connected components": 0.003,
                                    "forward+loss": 0.026, "backward": 0.020,
                                    "optimizer step": 0.002, "ema": 0.002,
                                    ts.NO_STAGE: 0.002, ts.UNLINKED: 0.002})
    assert s["kernels_per_it"] == 11 and s["memcpy_per_it"] == 1
    assert s["launch_calls_per_it"] == 8  # cudaLaunchKernel and cuLaunchKernel, no graphs
    assert s["graph_launches_per_it"] == 2 and s["graph_kernels_per_it"] == 2
    assert s["graph_launches_hidden_per_it"] == 1  # the backward's replay showed no kernel
    assert s["graph_kernels_ms"] == pytest.approx(0.015)
    assert s["unlinked_kernels_per_it"] == 1
    fprop = next(k for k in s["kernels"] if k["name"] == "sm90_xmma_fprop_implicit_gemm_bf16")
    assert fprop["count"] == 2 and fprop["ms"] == pytest.approx(0.020)
    assert s["kernels"][0]["name"] == fprop["name"]  # sorted by time
    printed = ts.format_profile("selftrain", "sgd+compile-ro", s, top=3)
    assert "  sm90_xmma_fprop_implicit_gemm_bf16 " in printed  # the top kernel
    signature = ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>(float*,"
                 " float const*, int)")
    assert ts._short(signature, 72) == "cunn_SoftMaxForward<4, float>"
    assert "resolved 2 kernels/it (0.01 ms/it) in 1 replays per iteration" in printed
    assert "1 of 2 CUDA-graph replays per iteration HIDE their kernels" in printed
    assert "1 kernels/it had no launch call" in printed
    assert "2 graph launches on the host" in printed
    assert "busy 0.06 ms/it of 0.20 ms/it measured (timed rounds) (31%, idle 69%)" in printed


def test_graph_replays_whose_kernels_the_profiler_does_not_report_are_flagged() -> None:
    found, counts = ts.profile_activities(cuda_events(graph_kernels=False), cuda=True)
    s = ts.profile_summary(found, counts, iterations=2, cuda=True, measured_ms=0.2,
                           profiled_ms=0.25)
    assert s["graph_launches_per_it"] == 2 and s["graph_kernels_per_it"] == 0
    assert s["graph_launches_hidden_per_it"] == 2
    assert s["total_ms"] == pytest.approx(0.052)
    assert [n for n in s["notes"] if "CUDA-graph" in n] == [
        "2 of 2 CUDA-graph replays per iteration HIDE their kernels: the profiler reported "
        "none, so the totals, categories, stages and busy time leave their work out (lower "
        "bounds)"]
    assert "HIDE their kernels" in ts.format_profile("selftrain", "sgd", s, top=5)


def conv_layers() -> int:
    model = build_model(ModelConfig(), in_channels=1, num_classes=2)
    return sum(isinstance(m, nn.Conv3d | nn.ConvTranspose3d) for m in model.modules())


def run_profile(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                out: Path, iterations: int, *extra: str) -> tuple[dict[str, Any], str]:
    # 4 filters rather than 16: the same layers (what is counted), a fraction of the CPU time
    monkeypatch.setattr(ts, "ModelConfig", lambda: ModelConfig(n_filters=4))
    monkeypatch.setattr(sys, "argv", [
        "train_step.py", "--device", "cpu", "--optimizers", "sgd", "--patch", "16,16,16",
        "--iterations", "1", "--rounds", "1", "--warmup", "1", "--no-stages",
        "--profile", str(iterations), "--json", str(out), *extra])
    ts.main()
    return json.loads(out.read_text(encoding="utf-8")), capsys.readouterr().out


@pytest.mark.slow  # 12 s of CPU training and profiling
def test_cpu_profile_of_two_and_four_iterations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 15 s; two threads took 106 s beside another busy process
    try:
        two, printed = run_profile(monkeypatch, capsys, tmp_path / "two.json", 2,
                                   "--profile-trace", str(tmp_path / "traces"))
        four, _ = run_profile(monkeypatch, capsys, tmp_path / "four.json", 4,
                              "--phases", "selftrain")
    finally:
        torch.set_num_threads(threads)
    assert "profile pretrain sgd: 2 iterations, torch ops on the CPU" in printed
    assert "profile selftrain sgd: 2 iterations" in printed
    for header in ("top 15 ops", "category", "stage (where launched)", "aten op calls"):
        assert header in printed
    # forward passes per iteration: pre-training 1 (the student); self-training the teacher on
    # each unlabeled half apart (its BatchNorm keeps the halves apart) and the student twice
    assert not teacher_batches(build_model(ModelConfig(), in_channels=1, num_classes=2),
                               "auto")
    passes = {"pretrain": 1, "selftrain": 4}
    rows = {(r["phase"], r["optimizer"]): r for r in two["rows"]}
    assert set(rows) == {("pretrain", "sgd"), ("selftrain", "sgd")}
    calls = {}
    for (phase, _), row in rows.items():
        p = row["profile"]
        assert p["iterations"] == 2 and p["warmup"] == 1 and p["measured_ms"] == row["ms"]
        assert set(p["categories"]) == set(ts.CATEGORY_NAMES)
        assert sum(c["ms"] for c in p["categories"].values()) == pytest.approx(p["total_ms"])
        assert sum(c["percent"] for c in p["categories"].values()) == pytest.approx(100.0)
        assert sum(c["ms"] for c in p["stages"].values()) == pytest.approx(p["total_ms"])
        assert 0 < p["busy_ms"] <= p["profiled_ms"]
        assert p["categories"]["conv forward"]["ms"] > 0
        assert p["categories"]["optimizer"]["ms"] > 0
        ops = {k["name"]: k for k in p["kernels"]}
        calls[phase] = ops["aten::convolution"]["count"]
        assert calls[phase] == conv_layers() * passes[phase]
        # one backward pass through each of the student's forward passes (sgd: one gradient)
        backward = conv_layers() * passes[phase] // (2 if phase == "selftrain" else 1)
        assert ops["aten::convolution_backward"]["count"] == backward
        trace = json.loads(Path(p["trace"]).read_text(encoding="utf-8"))
        assert trace["traceEvents"]
    assert rows[("selftrain", "sgd")]["profile"]["stages"]["ema"]["ms"] > 0
    assert rows[("selftrain", "sgd")]["profile"]["categories"]["ema"]["ms"] > 0
    (row,) = four["rows"]
    p = row["profile"]
    assert p["iterations"] == 4 and p["trace"] is None
    ops = {k["name"]: k for k in p["kernels"]}
    assert ops["aten::convolution"]["count"] == calls["selftrain"]
    assert ops["aten::convolution_backward"]["count"] == 2 * conv_layers()


def test_profile_trace_needs_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--profile-trace", "x"])
    with pytest.raises(SystemExit):
        ts.main()
