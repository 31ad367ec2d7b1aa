"""Data-parallel training on the CPU: 2 gloo processes, gradient averaging, runs, CLI errors."""

from __future__ import annotations

import json
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
from hco_cli.errors import CheckpointError, HcoError
from hco_cli.models import build_model
from hco_cli.optim import build_optimizer
from hco_cli.ssl.base import two_source_step
from hco_cli.training.checkpoint import load_checkpoint
from hco_cli.training.distributed import (
    BucketedAllReduce,
    check_replicas,
    fingerprint,
)
from hco_cli.training.events import ProgressEvent
from hco_cli.training.launch import launch
from hco_cli.training.logging import read_metrics
from hco_cli.training.loop import resume, train
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
    opt.gradient_reducer = BucketedAllReduce(world)
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


def test_same_streams_on_two_processes_equal_one_process(synthetic: Path,
                                                         tmp_path: Path) -> None:
    """With every rank on rank 0's streams the averaged gradients are one process's own."""
    one = train(tiny_config(synthetic, tmp_path / "one", processes=1))
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
