"""Data-parallel training on the CPU: 2 gloo processes, gradient averaging, runs, CLI errors."""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch import Tensor, nn
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import CheckpointError, HcoError, Stopped
from hco_cli.models.vnet import build_model
from hco_cli.optim import build_optimizer
from hco_cli.optim.sync import GradientSync
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.ssl.base import two_source_step
from hco_cli.training.distributed import (
    BucketedAllReduce,
    check_replicas,
    fingerprint,
)
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressEvent
from hco_cli.training.launch import launch
from hco_cli.training.logging import read_metrics
from hco_cli.training.presets import preset

runner = CliRunner()


# ------------------------------------------------------------------ the reducer (2 ranks)
def _rank_main(rank: int, world: int, store: str) -> None:
    """Runs in each of 2 spawned processes; an assertion failure fails the spawning test."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _check_bucketed_mean(rank)
        _check_single_tensor_in_chunks(rank)
        _check_hco_step_averages_each_source(rank, world)
    finally:
        dist.destroy_process_group()


def _check_bucketed_mean(rank: int) -> None:
    # rank r holds (r + 1) * base: the mean is 1.5 * base, exactly, in every dtype used.
    bases = [torch.arange(7.0), torch.arange(12.0).reshape(3, 4), torch.full((40,), 2.0),
             torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4),
             torch.arange(48.0).reshape(1, 3, 2, 2, 4).to(memory_format=torch.channels_last_3d)]
    grads = [b * (rank + 1) for b in bases]
    reducer = BucketedAllReduce(2, bucket_mb=64 / 2**20)  # 64-byte buckets: many of them
    assert len(reducer.buckets(grads)) >= 4
    reducer(grads)
    for g, b in zip(grads, bases, strict=True):
        assert g.dtype == b.dtype and g.stride() == b.stride()
        assert torch.equal(g, b * 1.5)


def _check_single_tensor_in_chunks(rank: int) -> None:
    flat = torch.arange(1000.0) * (rank + 1) - rank * 3.0  # mean: 1.5 * i - 1.5
    storage = flat.data_ptr()
    BucketedAllReduce(2, bucket_mb=256 / 2**20)([flat])  # 64 floats per chunk: 16 chunks
    assert flat.data_ptr() == storage  # reduced in place
    assert torch.equal(flat, torch.arange(1000.0) * 1.5 - 1.5)


def _check_hco_step_averages_each_source(rank: int, world: int) -> None:
    """One sgd-hco step from rank-own data equals a step on the mean g_L and mean g_U."""
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))

    def losses(net: nn.Module, r: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(100 + r)
        x_l, x_u = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
        return net(x_l).square().mean(), (net(x_u) - 1).abs().mean()

    hp = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    net = model()
    opt = build_optimizer("sgd-hco", net.parameters(), **hp)
    GradientSync(opt, BucketedAllReduce(world))
    loss_l, loss_u = losses(net, rank)
    two_source_step(opt, list(net.parameters()), loss_l, loss_u)

    ref = model()
    params = list(ref.parameters())
    per_rank = []
    for r in range(world):
        l_l, l_u = losses(ref, r)
        per_rank.append((torch.autograd.grad(l_l, params), torch.autograd.grad(l_u, params)))
    mean_l = [sum(g) / world for g in zip(*(p[0] for p in per_rank), strict=True)]
    mean_u = [sum(g) / world for g in zip(*(p[1] for p in per_rank), strict=True)]
    ref_opt = build_optimizer("sgd-hco", params, **hp)
    ref_opt.step_two_source(mean_l, mean_u)  # type: ignore[attr-defined]
    for p, q in zip(net.parameters(), params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # the check has teeth: a step on this rank's own gradients lands elsewhere
    own = model()
    l_l, l_u = losses(own, rank)
    two_source_step(build_optimizer("sgd-hco", own.parameters(), **hp),
                    list(own.parameters()), l_l, l_u)
    assert any((p - q).abs().max() > 1e-4 for p, q in zip(own.parameters(), params, strict=True))


def test_reducer_averages_buckets_chunks_and_both_sources(tmp_path: Path) -> None:
    tmp.start_processes(_rank_main, args=(2, str(tmp_path / "store")), nprocs=2,
                        start_method="spawn")


# ------------------------------------------- all-reduce overlapped with backward (2 ranks)
def _overlap_main(rank: int, world: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for name in ("sgd-hco", "sgd"):
            _check_overlapped_step_equals_mean_step(name, rank, world)
        _check_backward_and_step(rank, world)
        _check_parameter_without_gradient(rank, world)
        _check_collection_errors(world)
        # Both ranks past their last collective before the group goes: a gloo group torn
        # down right after an asynchronous all-reduce can abort the peer still finishing it.
        # The checks' optimizers (reference cycles through their hooks) and the gloo work
        # handles they hold go first, while the group exists: freed at interpreter exit
        # instead, a handle aborted the process now and then (about 1 run in 20, loaded CPU).
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


# 4-KiB buckets: the tiny networks' tensors (padded to 1024 floats each) fill 1 or 2 per bucket
TINY_BUCKET_MB = 8192 / 2**20
HP = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def _data(rank: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def _flat_opt(name: str, params: list[nn.Parameter], world: int | None) -> Any:
    opt = build_optimizer(name, params, flat=True, **HP)
    if world is not None:
        GradientSync(opt, BucketedAllReduce(world, bucket_mb=TINY_BUCKET_MB))
    return opt


def _mean_grads(loss_of: Any, params: list[nn.Parameter], world: int) -> list[Tensor | None]:
    """The gradients of ``loss_of(rank)`` averaged over the ranks (None where never used)."""
    per_rank = [torch.autograd.grad(loss_of(r), params, allow_unused=True) for r in range(world)]
    return [None if g[0] is None else sum(g) / world for g in zip(*per_rank, strict=True)]


def _check_overlapped_step_equals_mean_step(name: str, rank: int, world: int) -> None:
    net = _net()
    params = list(net.parameters())
    opt = _flat_opt(name, params, world)
    assert all(p._backward_hooks for p in params)  # one hook per parameter
    x_l, x_u = _data(rank)
    two_source_step(opt, params, net(x_l).square().mean(), (net(x_u) - 1).abs().mean())
    # buckets left during the backward pass: g_L and g_U apart for hco, one combined g for sgd
    sources = {"sgd-hco": [0, 1], "sgd": [0]}[name]
    assert sorted(opt.sync.overlap.last_overlap) == sources
    assert all(early == total == opt.sync.overlap.buckets >= 3
               for early, total in opt.sync.overlap.last_overlap.values())

    ref = _net()
    ref_params = list(ref.parameters())
    loss_l = [lambda r: ref(_data(r)[0]).square().mean()]
    loss_u = [lambda r: (ref(_data(r)[1]) - 1).abs().mean()]
    ref_opt = _flat_opt(name, ref_params, None)
    if name == "sgd-hco":
        ref_opt.step_two_source(_mean_grads(loss_l[0], ref_params, world),
                                _mean_grads(loss_u[0], ref_params, world))
    else:
        total = _mean_grads(lambda r: loss_l[0](r) + loss_u[0](r), ref_params, world)
        ref_opt.step_two_source(total, [None] * len(total))
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    own = _net()
    own_params = list(own.parameters())
    two_source_step(_flat_opt(name, own_params, None), own_params,
                    own(x_l).square().mean(), (own(x_u) - 1).abs().mean())
    assert any((p - q).abs().max() > 1e-4 for p, q in zip(own_params, ref_params, strict=True))


def _check_backward_and_step(rank: int, world: int) -> None:
    """``.backward()`` inside the collection, then a plain ``step()``, on the averaged gradient."""
    net = _net()
    opt = _flat_opt("sgd", list(net.parameters()), world)
    with opt.collecting(source=0):
        net(_data(rank)[0]).square().mean().backward()
    opt.step()
    overlap = opt.sync.overlap
    assert overlap.last_overlap == {0: (overlap.buckets, overlap.buckets)}
    ref = _net()
    ref_params = list(ref.parameters())
    mean = _mean_grads(lambda r: ref(_data(r)[0]).square().mean(), ref_params, world)
    ref_opt = _flat_opt("sgd", ref_params, None)
    ref_opt.step_two_source(mean, [None] * len(mean))
    for p, q in zip(net.parameters(), ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _check_parameter_without_gradient(rank: int, world: int) -> None:
    """A head only in L_L (no g_U) and a parameter in no loss: zeros, launched at the step.

    Two steps: in the second the head is left out of L_L too, so its slice must be zeroed,
    not left with the first step's gradient.
    """
    def build() -> tuple[list[nn.Parameter], Any]:
        net, head = _net(), nn.Linear(6, 1)
        unused = nn.Parameter(torch.ones(3))
        params = [*net.parameters(), *head.parameters(), unused]

        def losses(r: int, with_head: bool) -> tuple[Tensor, Tensor]:
            x_l, x_u = _data(r)
            loss_l = net(x_l).square().mean()
            if with_head:
                loss_l = loss_l + head(x_l).square().mean()
            return loss_l, (net(x_u) - 1).abs().mean()
        return params, losses

    params, losses = build()
    ref_params, ref_losses = build()
    opt = _flat_opt("sgd-hco", params, world)
    ref_opt = _flat_opt("sgd-hco", ref_params, None)
    for with_head in (True, False):
        two_source_step(opt, params, *losses(rank, with_head))
        early_l, total_l = opt.sync.overlap.last_overlap[0]
        early_u, total_u = opt.sync.overlap.last_overlap[1]
        # the first bucket (the unused parameter) waits for the step; g_U lacks the head
        assert early_l == total_l - (1 if with_head else 2) and early_u == total_u - 2
        grads_l = _mean_grads(lambda r, h=with_head: ref_losses(r, h)[0], ref_params, world)
        grads_u = _mean_grads(lambda r, h=with_head: ref_losses(r, h)[1], ref_params, world)
        assert grads_u[-3:] == [None] * 3 and grads_l[-1] is None
        ref_opt.step_two_source(grads_l, grads_u)
        for p, q in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(params[-1], torch.ones(3))  # weight decay still steps it


def _check_collection_errors(world: int) -> None:
    net = _net()
    params = list(net.parameters())
    opt = _flat_opt("sgd-hco", params, world)
    x = torch.randn(4, 6)
    with opt.collecting(source=0):
        grads = torch.autograd.grad(net(x).sum(), params)
    with (pytest.raises(RuntimeError, match="source 0 was already collected since the last "
                                            "step"),
          opt.collecting(source=0)):
        pass
    with pytest.raises(RuntimeError, match="the step got 0 gradients for source 0 but 6 were"):
        opt.step_two_source([None] * len(params), list(grads))
    with (pytest.raises(RuntimeError, match="second gradient for source 1 after its bucket"),
          opt.collecting(source=1)):
        out = net(x)
        torch.autograd.grad(out.sum(), params, retain_graph=True)
        torch.autograd.grad(out.sum(), params)
    with pytest.raises(ValueError, match="source must be 0"):
        opt.collecting(source=2)
    opt.sync.close()  # hooks removed: back to the plain flat optimizer
    assert opt.sync is None and not any(p._backward_hooks for p in params)
    single = _flat_opt("sgd-hco", params, 1)  # one process: no hooks
    assert single.sync.overlap is None and not any(p._backward_hooks for p in params)


def test_overlapped_reduce_equals_the_step_on_averaged_gradients(tmp_path: Path) -> None:
    tmp.start_processes(_overlap_main, args=(2, str(tmp_path / "store")), nprocs=2,
                        start_method="spawn")


def test_buckets_group_by_dtype_and_size() -> None:
    reducer = BucketedAllReduce(2, bucket_mb=100 / 2**20)  # 100 bytes = 25 float32
    a, b, c = torch.zeros(20), torch.zeros(10), torch.zeros(30)
    d = torch.zeros(3, dtype=torch.float64)
    groups = reducer.buckets([a, d, b, c])
    assert [[t.numel() for t in g] for g in groups] == [[20], [3], [10], [30]]
    assert BucketedAllReduce(1)([a]) is None  # one process: nothing to do


def test_check_replicas_names_the_diverged_process() -> None:
    same = {"fingerprint": [1.0, 2.0]}
    check_replicas([same, dict(same)], iteration=3)
    with pytest.raises(HcoError, match="process 1 differ from those of process 0 at iteration 3"):
        check_replicas([same, {"fingerprint": [1.0, 2.5]}], iteration=3)


# --------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=4, val=1, test=0, shape=(24, 24, 20))
    return out


def tiny_config(data: Path, run_dir: Path, *, processes: int = 2) -> TrainConfig:
    """BCP with SGD-HCO, 1 + 3 iterations of a 4-filter V-Net, 2 CPU processes."""
    raw = preset("synthetic")
    raw["data"].update(path=str(data), patch_size=[32, 32, 16])
    raw["model"]["n_filters"] = 4
    raw["framework"].update(pretrain_iterations=1, selftrain_iterations=3)
    raw["validation"].update(every=2, stride=[16, 16, 8])
    raw.update(run_dir=str(run_dir), checkpoint_every=2, log_every=2, device="cpu",
               distributed={"processes": processes})
    return validate_config(raw)


def _student(state: dict[str, Any]) -> nn.Module:
    config = validate_config(state["config"])
    model = build_model(config.model, in_channels=1, num_classes=int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model


def _networks(state: dict[str, Any]) -> dict[str, Tensor]:
    nets = state["framework"]["networks"]
    return {f"{n}/{k}": v for n, sd in nets.items() for k, v in sd.items()}


def stop_rank0_in_selftrain(rank: int, event: ProgressEvent) -> None:
    """Worker hook: rank 0 fails after global iteration 3 (its last.pt holds iteration 2)."""
    if rank == 0 and event.kind == "step" and event.phase == "selftrain" and event.iteration == 2:
        raise HcoError("stopped by the test")


@pytest.fixture(scope="module")
def straight(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    events: list[ProgressEvent] = []
    result = train(tiny_config(synthetic, run), progress=events.append)
    assert result.finished and result.iterations == {"pretrain": 1, "selftrain": 3}
    assert [e.iteration for e in events if e.kind == "step"] == [1, 1, 2, 3]  # rank 0's only
    return run


def test_two_processes_write_one_run_and_stay_identical(straight: Path) -> None:
    info = json.loads((straight / "run.json").read_text(encoding="utf-8"))
    assert info["processes"] == 2 and info["finished"] is True
    steps = [r for r in read_metrics(straight / "metrics.jsonl") if r["phase"] != "val"]
    assert [r["iter"] for r in steps] == [1, 2, 3, 4]  # written once, by rank 0
    last = load_checkpoint(straight / "checkpoints/last.pt")
    assert last["processes"] == 2 and last["config"]["distributed"]["processes"] == 2
    first, second = last["replicas"]
    # the ranks drew different data and cubes, yet hold the same weights: the saved ones
    assert not torch.equal(first["sampler"]["generator"], second["sampler"]["generator"])
    assert not torch.equal(first["framework_rng"]["cpu"], second["framework_rng"]["cpu"])
    assert first["fingerprint"] == second["fingerprint"]
    # (summed here with other threads: equal to rounding)
    assert first["fingerprint"] == pytest.approx(fingerprint([_student(last)]), rel=1e-12)


def _one_process_on_rank_threads(config: TrainConfig) -> Any:
    """Train ``config`` in this process on the threads each of two ranks gets (cpu_count //
    2): on some CPUs (AMX, oneDNN) a convolution's sums depend on the thread count, so a
    one-process twin of a two-rank run must compute on as many."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        return train(config)
    finally:
        torch.set_num_threads(threads)


def test_same_streams_on_two_processes_equal_one_process(synthetic: Path,
                                                         tmp_path: Path) -> None:
    """With every rank on rank 0's streams the averaged gradients are one process's own."""
    one = _one_process_on_rank_threads(tiny_config(synthetic, tmp_path / "one", processes=1))
    two = launch(tiny_config(synthetic, tmp_path / "two"), processes=2, same_streams=True)
    assert one.best_dice == two.best_dice
    a = load_checkpoint(tmp_path / "one/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    ta, tb = _networks(a), _networks(b)
    assert ta.keys() == tb.keys() and any(k.startswith("teacher/") for k in ta)
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-6, atol=1e-7, msg=key)
    la = [r["loss_l"] for r in read_metrics(tmp_path / "one/metrics.jsonl") if "loss_l" in r]
    lb = [r["loss_l"] for r in read_metrics(tmp_path / "two/metrics.jsonl") if "loss_l" in r]
    assert la == pytest.approx(lb, rel=1e-6)


@pytest.mark.slow  # 25-30 s: the slow tier (pyproject.toml)
def test_interrupted_two_process_run_resumes_exactly(synthetic: Path, straight: Path,
                                                     tmp_path: Path) -> None:
    run = tmp_path / "b"
    with pytest.raises(HcoError, match="stopped by the test"):
        launch(tiny_config(synthetic, run), processes=2, worker_hook=stop_rank0_in_selftrain)
    assert load_checkpoint(run / "checkpoints/last.pt")["global_iter"] == 2
    with pytest.raises(CheckpointError, match=r"saved by 2 process\(es\); resume it with "
                                              r"--gpus 2 \(not 1\)"):
        resume(run, processes=1)
    resume(run)
    _assert_ended_alike(straight, run)


def _assert_ended_alike(straight: Path, run: Path) -> None:
    """``run`` (stopped and resumed) ended bit for bit where ``straight`` did: weights, every
    rank's random streams, and the logged losses of iterations 1-4."""
    a = load_checkpoint(straight / "checkpoints/last.pt")
    b = load_checkpoint(run / "checkpoints/last.pt")
    ta, tb = _networks(a), _networks(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    for field in ("sampler", "rng"):
        for ra, rb in zip(a["replicas"], b["replicas"], strict=True):
            assert torch.equal(ra[field]["generator" if field == "sampler" else "torch"],
                               rb[field]["generator" if field == "sampler" else "torch"])
    ma = [r for r in read_metrics(straight / "metrics.jsonl") if r["phase"] != "val"]
    mb = [r for r in read_metrics(run / "metrics.jsonl") if r["phase"] != "val"]
    assert [r["iter"] for r in mb] == [1, 2, 3, 4]
    assert [r["loss_l"] for r in ma] == [r["loss_l"] for r in mb]


def hold_rank1_after_selftrain_step_1(rank: int, event: ProgressEvent) -> None:
    """Worker hook: rank 1 pauses after self-training's first step, so that rank 0 waits for it
    in the next step's gradient all-reduce while the launcher takes its Ctrl-C."""
    if rank == 1 and event.kind == "step" and event.phase == "selftrain" and event.iteration == 1:
        time.sleep(2.0)


@pytest.mark.slow  # 25-30 s each: the slow tier (pyproject.toml)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_a_two_process_run_where_the_ranks_agree(
        synthetic: Path, straight: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
        signum: signal.Signals) -> None:
    """A real SIGINT to the launching process (a terminal's Ctrl-C), or SIGTERM to it and to
    every worker (as Slurm signals a job's processes; the workers ignore both): both ranks
    stop with one checkpoint at the next log_every boundary (self-training's iteration 2,
    global 3, between the periodic checkpoints), the launch raises KeyboardInterrupt, the
    handlers are put back, and the resume ends bit for bit where the straight run ended."""
    run = tmp_path / "c"

    def interrupt(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 1:
            if signum == signal.SIGTERM:
                for worker in mp.active_children():
                    os.kill(worker.pid, signum)
            os.kill(os.getpid(), signum)

    with pytest.raises(Stopped) as stopped:
        launch(tiny_config(synthetic, run), processes=2, progress=interrupt,
               worker_hook=hold_rank1_after_selftrain_step_1)
    assert stopped.value.signum == signum  # the launcher's exit code: 130 / 143
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"{name}: stopping within 2 iterations" in capfd.readouterr().err
    saved = load_checkpoint(run / "checkpoints/last.pt")
    assert saved["global_iter"] == 3 and len(saved["replicas"]) == 2
    assert [r["iter"] for r in read_metrics(run / "metrics.jsonl") if r["phase"] != "val"] \
        == [1, 2, 3]
    resume(run)
    _assert_ended_alike(straight, run)


def _flat(config: TrainConfig, *, processes: int = 2) -> TrainConfig:
    raw = config.model_dump(mode="json")
    raw["optimizer"]["options"] = {"flat": True}
    raw["distributed"]["processes"] = processes
    return validate_config(raw)


@pytest.mark.slow  # 25-30 s: the slow tier (pyproject.toml)
def test_flat_optimizers_overlap_the_reduce_and_keep_ranks_identical(synthetic: Path,
                                                                     tmp_path: Path) -> None:
    """BCP with flat optimizers (pre-training's sgd, self-training's sgd-hco) all-reduces
    during the backward pass: ranks on their own data stay identical, and ranks on rank 0's
    streams train exactly like one process."""
    result = train(_flat(tiny_config(synthetic, tmp_path / "own")))
    assert result.finished
    first, second = load_checkpoint(tmp_path / "own/checkpoints/last.pt")["replicas"]
    assert not torch.equal(first["sampler"]["generator"], second["sampler"]["generator"])
    assert first["fingerprint"] == second["fingerprint"]

    one = _one_process_on_rank_threads(_flat(tiny_config(synthetic, tmp_path / "one"),
                                             processes=1))
    two = launch(_flat(tiny_config(synthetic, tmp_path / "two")), processes=2,
                 same_streams=True)
    assert one.best_dice == two.best_dice
    ta = _networks(load_checkpoint(tmp_path / "one/checkpoints/last.pt"))
    tb = _networks(load_checkpoint(tmp_path / "two/checkpoints/last.pt"))
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-6, atol=1e-7, msg=key)


# ------------------------------------------------------------------------- CLI errors
def _one_error_line(output: str, text: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], output
    assert "Traceback" not in output


def test_cli_refuses_more_gpus_than_cuda_devices(synthetic: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    result = runner.invoke(app, ["train", "--dataset", "synthetic", "--data", str(synthetic),
                                 "--run-dir", str(tmp_path / "r"), "--gpus", "2"])
    assert result.exit_code == 1
    _one_error_line(result.output, "--gpus 2: only 0 CUDA device(s) are available")
    sync = runner.invoke(app, ["train", "--dataset", "synthetic", "--data", str(synthetic),
                               "--run-dir", str(tmp_path / "r"), "--device", "cpu",
                               "--gpus", "2", "--sync-batchnorm"])
    assert sync.exit_code == 1
    _one_error_line(sync.output, "distributed.sync_batchnorm needs CUDA devices")
    assert not (tmp_path / "r").exists()


def test_cli_failing_worker_ends_the_run_with_its_message(synthetic: Path,
                                                           tmp_path: Path) -> None:
    raw = tiny_config(synthetic, tmp_path / "run").model_dump(mode="json")
    raw["optimizer"]["lr"] = 1e30  # the weights blow up on the first step, on every rank
    config = tmp_path / "diverge.yaml"
    config.write_text(json.dumps(raw), encoding="utf-8")
    result = runner.invoke(app, ["train", "--config", str(config), "--gpus", "2"])
    assert result.exit_code == 1
    _one_error_line(result.output, "training diverged: ")


def test_cli_resume_with_another_process_count_is_refused(synthetic: Path, tmp_path: Path
                                                          ) -> None:
    run = tmp_path / "one"

    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(synthetic, run, processes=1), progress=stop)
    result = runner.invoke(app, ["train", "--resume", str(run), "--gpus", "2"])
    assert result.exit_code == 1
    _one_error_line(result.output, "last.pt was saved by 1 process(es); resume it with --gpus 1")
    mixed = runner.invoke(app, ["train", "--resume", str(run), "--sync-batchnorm"])
    assert mixed.exit_code == 1 and "give no other options" in mixed.output
