"""The training loop: exact resume, divergence handling, validation/best, init-from, run files."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.batch import Batch
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    OutputError,
    TrainingDivergedError,
)
from hco_cli.optim.protocol import TwoSource
from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.runs.folder import RUN_INFO_KEYS, read_config_data
from hco_cli.ssl.base import Framework, Phase, StepResult, two_source_step
from hco_cli.ssl.losses import mix_loss
from hco_cli.training import setup as run_setup
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressEvent
from hco_cli.training.logging import read_metrics
from hco_cli.training.presets import preset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=4, val=1, test=1, shape=(24, 24, 20))
    return out


def tiny_config(data: Path, run_dir: Path, **changes: Any) -> TrainConfig:
    """BCP with SGD-HCO, 1 + 3 iterations of a 4-filter V-Net on 32x32x16 patches."""
    raw = preset("synthetic")
    raw["data"].update(path=str(data), patch_size=[32, 32, 16])
    raw["model"]["n_filters"] = 4
    raw["framework"].update(pretrain_iterations=1, selftrain_iterations=3)
    raw["validation"].update(every=2, stride=[16, 16, 8])
    raw.update(run_dir=str(run_dir), checkpoint_every=2, log_every=2, device="cpu")
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[key] = value
    return validate_config(raw)


def _tensors(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items()
                for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree)
                for k, v in _tensors(sub, f"{prefix}/{i}").items()}
    return {}


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def straight(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One uninterrupted run, shared by the tests below."""
    run = tmp_path_factory.mktemp("straight") / "run"
    return run, train(tiny_config(synthetic, run))


def test_interrupted_and_resumed_run_is_bit_identical(synthetic, straight, tmp_path):
    run_a, result = straight
    assert result.finished

    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 2:
            raise _Interrupt  # after global iteration 3; last.pt holds iteration 2

    with pytest.raises(_Interrupt):
        train(tiny_config(synthetic, tmp_path / "b"), progress=stop)
    assert load_checkpoint(tmp_path / "b/checkpoints/last.pt")["global_iter"] == 2
    resume(tmp_path / "b")
    a = load_checkpoint(run_a / "checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    ta, tb = _tensors(a["framework"]), _tensors(b["framework"])
    assert ta.keys() == tb.keys() and any("teacher" in k for k in ta)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    for key in ("optimizers", "sampler"):
        oa, ob = _tensors(a[key]), _tensors(b[key])
        assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    # the metrics of the replayed iterations are not duplicated, and match the straight run
    ma = [r for r in read_metrics(run_a / "metrics.jsonl") if r["phase"] != "val"]
    mb = [r for r in read_metrics(tmp_path / "b/metrics.jsonl") if r["phase"] != "val"]
    assert [r["iter"] for r in mb] == list(range(1, 5))
    assert [r["loss_l"] for r in ma] == [r["loss_l"] for r in mb]
    assert json.loads((tmp_path / "b/run.json").read_text(encoding="utf-8"))["finished"] is True
    with pytest.raises(CheckpointError, match="already finished"):
        resume(tmp_path / "b")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_at_the_next_iteration_and_the_resume_is_bit_identical(
        synthetic, straight, tmp_path, signum):
    """A real SIGINT (or SIGTERM, a cluster's time limit) after global iteration 3
    (checkpoints every 2): the run stops at the next iteration boundary with last.pt there (3,
    not the periodic 2), and the resumed run ends with the straight run's weights."""
    run_a, _ = straight

    def ctrl_c(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 2:
            os.kill(os.getpid(), signum)

    with pytest.raises(Interrupted, match="continue from the last checkpoint") as stopped:
        train(tiny_config(synthetic, tmp_path / "b"), progress=ctrl_c)
    assert stopped.value.exit_code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert load_checkpoint(tmp_path / "b/checkpoints/last.pt")["global_iter"] == 3
    resume(tmp_path / "b")
    a = _tensors(load_checkpoint(run_a / "checkpoints/last.pt")["framework"])
    b = _tensors(load_checkpoint(tmp_path / "b/checkpoints/last.pt")["framework"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once(synthetic, tmp_path):
    """Two SIGINTs in one iteration: the second interrupts where it lands, and last.pt stays
    the periodic one (iteration 2)."""
    def ctrl_c_twice(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(tiny_config(synthetic, tmp_path / "c"), progress=ctrl_c_twice)
    assert load_checkpoint(tmp_path / "c/checkpoints/last.pt")["global_iter"] == 2


def test_resume_of_a_final_checkpoint_without_its_record_writes_the_record(straight, tmp_path):
    """Stopped between the final last.pt and run.json: --resume runs no iteration, leaves
    last.pt and the metrics as they were, and writes run.json as finished."""
    run_a, _ = straight
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    (run / "run.json").write_text(json.dumps({**info, "finished": False}), encoding="utf-8")
    last = (run / "checkpoints/last.pt").read_bytes()
    metrics = (run / "metrics.jsonl").read_text(encoding="utf-8")
    events: list[ProgressEvent] = []
    result = resume(run, progress=events.append)
    assert not [e for e in events if e.kind == "step"]
    assert (run / "checkpoints/last.pt").read_bytes() == last
    assert (run / "metrics.jsonl").read_text(encoding="utf-8") == metrics
    again = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert again["finished"] is True and again["best"] == info["best"]
    assert result.best_dice == info["best"]["score"]
    with pytest.raises(CheckpointError, match="already finished"):
        resume(run)


def test_run_folder_contents_and_records(straight):
    run, result = straight
    for name in ("config.yaml", "run.json", "metrics.jsonl", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/pretrain.pt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert set(RUN_INFO_KEYS) <= set(info)
    assert info["iterations"] == {"pretrain": 1, "selftrain": 3}
    assert (info["labeled"], info["unlabeled"], info["dataset"]) == (4, 4, "data")
    records = read_metrics(run / "metrics.jsonl")
    steps = [r for r in records if r["phase"] != "val"]
    assert [r["iter"] for r in steps] == list(range(1, 5))
    for r in steps:
        assert set(r) == {"phase", "iter", "epoch", "loss_l", "loss_u", "ratio", "admitted",
                          "lr", "time"}
    assert all(r["ratio"] is None for r in steps if r["phase"] == "pretrain")
    sel = [r for r in steps if r["phase"] == "selftrain"]
    assert all(math.isclose(r["ratio"], r["loss_u"] / r["loss_l"]) for r in sel)
    assert all(0 <= r["admitted"] <= 1 for r in sel)  # sgd-hco reports its mask
    # 4 labeled / batch 2 = 2 iterations an epoch, counted within each phase
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2]
    vals = [r for r in records if r["phase"] == "val"]
    # every 2 iterations of a phase, and at the end of a phase
    assert [(r["train_phase"], r["iter"]) for r in vals] == [
        ("pretrain", 1), ("selftrain", 3), ("selftrain", 4)]
    best = load_checkpoint(run / "checkpoints/best.pt")
    chosen = max((r for r in vals if r["train_phase"] == "selftrain"), key=lambda r: r["score"])
    assert best["iter"] == chosen["iter"] == result.best_iteration
    assert best["score"] == pytest.approx(result.best_dice)


def test_refuses_a_non_empty_run_dir(synthetic, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not empty; continue it with --resume"):
        train(tiny_config(synthetic, run))
    with pytest.raises(OutputError, match="was not written by hco"):
        train(tiny_config(synthetic, run), force=True)


def test_force_keeps_the_replaced_run_until_the_first_checkpoint(synthetic, straight, tmp_path):
    """--force moves the old run aside; a replacement stopped before its first checkpoint
    leaves it there (and says where), one that checkpoints deletes it."""
    run_a, _ = straight
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    old_last = (run / "checkpoints/last.pt").read_bytes()
    aside = tmp_path / ".run.replaced"

    events: list[ProgressEvent] = []

    def record_then_stop(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "step":
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"the run it replaced is kept in .*\.run\.replaced"):
        train(tiny_config(synthetic, run), force=True, progress=record_then_stop)
    assert any("old run is kept in" in (e.message or "") for e in events if e.kind == "warning")
    assert (aside / "checkpoints/last.pt").read_bytes() == old_last
    assert not (run / "checkpoints/last.pt").exists()
    train(tiny_config(synthetic, run))  # the stub is replaced; the old run stays aside
    assert not aside.exists()  # gone once the new run wrote its last.pt
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["finished"] is True


def test_test_selection_warns(synthetic, tmp_path, monkeypatch):
    monkeypatch.setattr(run_setup, "build_framework", lambda cfg, **kw: NaNFramework(bad=99))
    events: list[ProgressEvent] = []
    train(tiny_config(synthetic, tmp_path / "t", validation__select_on="test",
                      optimizer={"name": "sgd", "lr": 0.01}), progress=events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("TEST split" in w and "inflates" in w for w in warnings)
    info = json.loads((tmp_path / "t/run.json").read_text(encoding="utf-8"))
    assert any("inflates" in w for w in info["warnings"])
    assert load_checkpoint(tmp_path / "t/checkpoints/best.pt")["split"] == "test"


class NaNFramework(Framework):
    """A 1x1x1 conv whose loss turns NaN at ``bad`` (or only its weights, if ``weights``)."""

    name = "nan"

    def __init__(self, *, bad: int, weights: bool = False) -> None:
        torch.manual_seed(0)
        self.net = nn.Conv3d(1, 3, 1)
        self.bad, self.weights = bad, weights

    def phases(self) -> list[Phase]:
        return [Phase("train", 12, needs_unlabeled=False)]

    def trainable(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def train_step(self, phase: Phase, batch: Batch, optimizers: Mapping[str, TwoSource],
                   iteration: int) -> StepResult:
        loss = self.net(batch.labeled_image).pow(2).mean()
        if iteration >= self.bad and not self.weights:
            loss = loss * torch.tensor(math.nan)
        two_source_step(optimizers["net"], list(self.net.parameters()), loss, None)
        if iteration >= self.bad and self.weights:
            with torch.no_grad():
                self.net.weight.fill_(math.inf)
        return StepResult(loss_l=loss.detach(), loss_u=torch.zeros(()))

    def eval_model(self) -> nn.Module:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])


@pytest.mark.parametrize("weights", [False, True])
def test_divergence_stops_and_keeps_the_last_good_checkpoint(synthetic, tmp_path, monkeypatch,
                                                             weights):
    monkeypatch.setattr(run_setup, "build_framework",
                        lambda cfg, **kw: NaNFramework(bad=5, weights=weights))
    config = tiny_config(synthetic, tmp_path / "n", checkpoint_every=4, log_every=4,
                         optimizer={"name": "sgd", "lr": 0.01})
    with pytest.raises(TrainingDivergedError, match="training diverged") as info:
        train(config)
    assert "last good checkpoint" in str(info.value)
    last = load_checkpoint(tmp_path / "n/checkpoints/last.pt")
    assert last["global_iter"] == 4
    assert all(t.isfinite().all() for t in _tensors(last["framework"]).values())
    assert json.loads((tmp_path / "n/run.json").read_text(encoding="utf-8"))["finished"] is False
    if not weights:
        records = read_metrics(tmp_path / "n/metrics.jsonl")
        assert records[-1]["iter"] == 6 and records[-1]["loss_l"] is None


def test_init_from_skips_pretraining(synthetic, straight, tmp_path, monkeypatch):
    """--init-from, given relative to the working folder, skips pre-training; the run stores
    it absolute, naming the run it started from wherever its record is read."""
    first, _ = straight
    pre = load_checkpoint(first / "checkpoints/pretrain.pt")
    second = tmp_path / "second"
    monkeypatch.chdir(first.parent)
    train(tiny_config(synthetic, second, init_from=first.name, framework__selftrain_iterations=1))
    assert read_config_data(second)["init_from"] == str(first.absolute())
    info = json.loads((second / "run.json").read_text(encoding="utf-8"))
    assert info["iterations"] == {"pretrain": 0, "selftrain": 1}
    records = read_metrics(second / "metrics.jsonl")
    assert [r["phase"] for r in records if r["phase"] != "val"] == ["selftrain"]
    assert records[0]["iter"] == 2  # global numbering continues after the shared pre-training
    assert pre["kind"] == "pretrain" and not (second / "checkpoints/pretrain.pt").exists()


def test_init_from_another_preparation_warns_or_is_refused(synthetic, straight, tmp_path):
    """A pre-training from the dataset prepared with other splits only warns (its weights saw
    other cases); one prepared with another normalisation is refused before training."""
    first, _ = straight
    copy = Path(shutil.copytree(synthetic, tmp_path / "data"))
    splits = json.loads((copy / "splits.json").read_text(encoding="utf-8"))
    splits["val"], splits["test"] = splits["test"], splits["val"]
    (copy / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    result = train(tiny_config(copy, tmp_path / "split", init_from=str(first),
                               framework__selftrain_iterations=1))
    assert [w for w in result.warnings if "pre-trained on" in w] == [
        f"--init-from {first} pre-trained on {copy} with other splits (the dataset was "
        "prepared again since): its weights saw other cases than this run's"]
    plan = json.loads((copy / "plans.json").read_text(encoding="utf-8"))
    plan["preprocess"]["norm"] = "none"
    (copy / "plans.json").write_text(json.dumps(plan), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"--init-from {first}: it pre-trained on {copy} "
                       "prepared with other splits and preprocessing; pre-train on this"):
        train(tiny_config(copy, tmp_path / "norm", init_from=str(first)))


def test_without_val_cases_no_best_is_written(tmp_path, monkeypatch):
    data = tmp_path / "noval"
    prepare_synthetic(data, labeled=2, unlabeled=0, val=0, test=1, shape=(32, 32, 16))
    monkeypatch.setattr(run_setup, "build_framework", lambda cfg, **kw: NaNFramework(bad=99))
    events: list[ProgressEvent] = []
    # No unlabeled cases: a labeled-only framework (bcp would need unlabeled batches).
    result = train(tiny_config(data, tmp_path / "r", optimizer={"name": "sgd", "lr": 0.01},
                               framework={"name": "supervised", "iterations": 12},
                               data__unlabeled_batch_size=0), progress=events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("no 'val' cases: best.pt will not be written" in w for w in warnings)
    assert result.best_dice is None and not (tmp_path / "r/checkpoints/best.pt").exists()
    assert (tmp_path / "r/checkpoints/last.pt").is_file()


def _steps(optimizer_state: dict[str, Any]) -> set[int]:
    """The step counts kept in an optimizer state dict (one per parameter with state)."""
    return {int(s["step"]) for s in optimizer_state["state"].values()}


def test_restore_optimizer_carries_the_best_pretraining_state(synthetic, tmp_path):
    """BCP-Pancreas: self-training starts from the optimizer state saved with the best weights."""
    changes = {"framework__pretrain_iterations": 4, "framework__selftrain_iterations": 2,
               "validation__every": 1, "optimizer": {"name": "adam-hco", "lr": 1e-3}}
    run = tmp_path / "carry"
    train(tiny_config(synthetic, run, framework__restore_optimizer=True, **changes))
    pretrain = load_checkpoint(run / "checkpoints" / "pretrain.pt")
    best_pre = [r for r in read_metrics(run / "metrics.jsonl")
                if r["phase"] == "val" and r["train_phase"] == "pretrain" and r["best"]][-1]
    assert _steps(pretrain["optimizers"]["student"]) == {best_pre["iter"]}
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert _steps(last["optimizers"]["student"]) == {best_pre["iter"] + 2}
    # Shared pre-training hands the same state on; the LA default re-creates the optimizer.
    shared = tmp_path / "shared"
    train(tiny_config(synthetic, shared, framework__restore_optimizer=True,
                      init_from=str(run), **changes))
    assert _steps(load_checkpoint(shared / "checkpoints" / "last.pt")["optimizers"]["student"]) \
        == {best_pre["iter"] + 2}
    fresh = tmp_path / "fresh"
    train(tiny_config(synthetic, fresh, **changes))
    assert "optimizers" not in load_checkpoint(fresh / "checkpoints" / "pretrain.pt")
    assert _steps(load_checkpoint(fresh / "checkpoints" / "last.pt")["optimizers"]["student"]) \
        == {2}
    with pytest.raises(ConfigError, match="holds no optimizer state"):
        train(tiny_config(synthetic, tmp_path / "bad", framework__restore_optimizer=True,
                          init_from=str(fresh), **changes))


def test_unlabeled_stream_can_include_the_labeled_cases(synthetic, tmp_path):
    """UCMT's unlabeled stream draws from every training case (data.unlabeled_includes_labeled)."""
    plain = run_setup.build_setup(tiny_config(synthetic, tmp_path / "a"))
    both = run_setup.build_setup(tiny_config(synthetic, tmp_path / "b",
                                             data__unlabeled_includes_labeled=True))
    labeled, unlabeled = plain.splits["labeled"], plain.splits["unlabeled"]
    assert len(plain.sampler.unlabeled_images) == len(unlabeled)
    assert len(both.sampler.unlabeled_images) == len(unlabeled) + len(labeled)


def test_compile_losses_reaches_the_framework(synthetic, tmp_path):
    """``compile_losses: true`` in the config swaps the framework's losses for compiled ones
    (tests/ssl/test_compiled_losses.py checks their values); off by default."""
    plain = run_setup.build_setup(tiny_config(synthetic, tmp_path / "a"))
    assert plain.framework.mix_loss is mix_loss
    compiled = run_setup.build_setup(tiny_config(synthetic, tmp_path / "b", compile_losses=True))
    assert compiled.framework.mix_loss._torchdynamo_orig_callable is mix_loss


def test_deterministic_turns_on_torchs_deterministic_algorithms(synthetic, tmp_path):
    """``deterministic: true`` is cuDNN's deterministic kernels without autotuning and torch's
    deterministic algorithms (warn only); a run without it turns them off again."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    try:
        run_setup.build_setup(tiny_config(synthetic, tmp_path / "a", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        run_setup.build_setup(tiny_config(synthetic, tmp_path / "b"))
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_fused_option_is_for_the_hco_phase_only(synthetic, tmp_path):
    """Pre-training's plain optimizer drops ``fused``; the hco phase applies it (here refused:
    the fused kernels need CUDA or Triton's interpreter), so the run stops after pre-training."""
    run = tmp_path / "run"
    config = tiny_config(synthetic, run, optimizer__options={"fused": True})
    with pytest.raises(ConfigError, match="fused=True"):
        train(config)
    phases = {r["phase"] for r in read_metrics(run / "metrics.jsonl")}
    assert "pretrain" in phases and "selftrain" not in phases


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-hco"])
def test_diagnosed_steps_carry_the_optimizer_diagnostics(synthetic, tmp_path, optimizer):
    """Every diagnostics_every-th step (counted over the run) gets the diagnostics, the others
    none; a plain optimizer gets g_L and g_U apart on those steps (a finite cosine)."""
    config = tiny_config(synthetic, tmp_path / "run", diagnostics_every=2,
                         optimizer__name=optimizer)
    train(config)
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] != "val"]
    diagnosed = [r["iter"] for r in steps if "step_norm" in r]
    assert diagnosed == [2, 4]
    for r in steps:
        if r["iter"] not in diagnosed:
            assert not {"step_norm", "cos_lu", "admitted_std"} & set(r)
            continue
        assert r["step_norm"] > 0 and r["grad_norm_l"] > 0 and r["grad_norm_u"] > 0
        assert -1.0 <= r["cos_lu"] <= 1.0
        assert r["step_ratio"] > 0
        masked = optimizer == "sgd-hco"
        assert (r["admitted_std"] is not None) == masked
        if masked:
            assert r["admitted_min"] <= r["admitted"] <= r["admitted_max"]
