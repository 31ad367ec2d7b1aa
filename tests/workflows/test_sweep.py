"""hco sweep library: grid layout, skip/resume/new, shared pre-training, evaluation, scheduling."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import yaml

from hco_cli.cli.sweep import _terminate_as_interrupt
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import ConfigError, DataError, HcoError
from hco_cli.processes import PARENT_ENV
from hco_cli.training.entry import train
from hco_cli.training.events import ProgressEvent
from hco_cli.workflows.sweep import (
    Arm,
    SubprocessLauncher,
    SweepOptions,
    SweepRun,
    _Chain,
    load_arms,
    plan_sweep,
    resolve_runs_per_gpu,
    run_status,
    run_sweep,
    schedule,
    train_argv,
)
from hco_cli.workflows.sweep_plan import PROCESS_BYTES, compare_command, run_memory_bytes
from hco_cli.workflows.sweep_status import run_state

ROOT = Path(__file__).resolve().parents[2]


def write_tiny_config(data: Path, path: Path) -> Path:
    """sample_configs/synthetic_demo.yaml shrunk to 2 + 2 iterations of a 4-filter V-Net."""
    raw = yaml.safe_load((ROOT / "sample_configs" / "synthetic_demo.yaml").read_text())
    raw["data"].update(path=str(data), patch_size=[32, 32, 16])
    raw["model"]["n_filters"] = 4
    raw["framework"].update(pretrain_iterations=2, selftrain_iterations=2, lr_decay_every=2)
    raw["validation"].update(every=2, stride=[16, 16, 8])
    raw.update(checkpoint_every=1, log_every=1, device="cpu")
    raw["data"]["device"] = "cpu"
    path.write_text(yaml.safe_dump(raw))
    return path


def tiny_dataset(root: Path) -> Path:
    """Phantoms of 32x32x24 with a 2 x 1 fold grid (L0U0, L1U0) of 2 labeled cases each."""
    out = root / "data"
    prepare_synthetic(out, labeled=4, unlabeled=2, val=1, test=1, shape=(32, 32, 24),
                      folds_labeled=2, folds_unlabeled=1, fold_size=2)
    return out


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    return write_tiny_config(tiny_dataset(root), root / "tiny.yaml")


@pytest.fixture(scope="module")
def swept(config: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepOptions, Any]:
    """A 2 optimizers x 2 seeds sweep, run once for the tests below."""
    out = tmp_path_factory.mktemp("grid") / "sweep"
    options = SweepOptions(config=config, optimizers=["sgd", "sgd-hco"], seeds=[1, 2], out=out)
    return options, run_sweep(options)


def test_sweep_trains_every_cell_into_the_compare_layout(swept):
    options, report = swept
    dirs = sorted(p.relative_to(options.out).as_posix() for p in options.out.glob("[!_]*/*"))
    assert dirs == ["sgd-hco/all-s1", "sgd-hco/all-s2", "sgd/all-s1", "sgd/all-s2"]
    # Each run trained the resolved config file the plan wrote.
    for outcome in report.outcomes:
        planned = yaml.safe_load(outcome.run.config_file.read_text())
        assert planned == yaml.safe_load((outcome.run.run_dir / "config.yaml").read_text())
    for outcome in report.outcomes:
        info = json.loads((outcome.run.run_dir / "run.json").read_text())
        assert info["finished"] is True
        assert (info["optimizer"], info["seed"]) == (outcome.run.optimizer, outcome.run.seed)
        assert outcome.outcome == "trained"
        assert outcome.best_dice == info["best"]["score"]
    assert report.compare_command == (f"hco compare 'sgd={options.out}/sgd/*' "
                                      f"'sgd-hco={options.out}/sgd-hco/*'")


def test_a_one_arm_sweep_names_the_reference_it_needs(tmp_path: Path) -> None:
    """A comparison needs two arms: a sweep of one arm (a reading run alone) says where the
    reference's runs go instead of printing a line that fails."""
    runs = [cast(Any, SimpleNamespace(arm=arm)) for arm in ("_pretrain", "hco-r1", "hco-r1")]
    assert compare_command(runs, tmp_path) == (
        f"hco compare 'REFERENCE=<its run folders>' 'hco-r1={tmp_path}/hco-r1/*'")


def test_second_invocation_skips_finished_runs(swept):
    options, _ = swept
    files = sorted(options.out.glob("[!_]*/*/run.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    assert {r.status for r in plan_sweep(options)} == {"done"}
    again = run_sweep(options)
    assert [o.outcome for o in again.outcomes] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_a_relative_dataset_path_in_the_sweep_config_reuses_its_runs(swept, tmp_path,
                                                                    monkeypatch):
    """The runs store data.path absolute; the same sweep config giving it relative to the
    folder it runs from is the same dataset, so the finished runs are reused."""
    options, report = swept
    stored = yaml.safe_load((report.outcomes[0].run.run_dir / "config.yaml").read_text())
    data = Path(stored["data"]["path"])
    assert data.is_absolute()
    raw = yaml.safe_load(options.config.read_text())
    raw["data"]["path"] = data.name
    relative = tmp_path / "relative.yaml"
    relative.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(data.parent)
    assert {r.status for r in plan_sweep(options.model_copy(update={"config": relative}))} == {
        "done"}


def test_a_sweep_rerun_with_another_config_does_not_reuse_its_runs(swept, tmp_path):
    """The finished grid planned again from an edited config: a new learning rate is refused
    in one line before any plan file is rewritten (the old runs would be reported as trained
    with it); a new log interval (how a run is watched, not what it learns) still skips them."""
    options, _ = swept
    raw = yaml.safe_load(options.config.read_text())
    planned = sorted(options.out.glob("_configs/*/*.yaml"))
    before = {p: p.read_text() for p in planned}
    raw["optimizer"]["lr"] = 0.05
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"sgd/all-s1 was trained with another config than "
                                          r"this sweep gives it \(optimizer\.lr 0\.01 -> 0\.05\)"
                                          r"; sweep into another --out") as caught:
        plan_sweep(options.model_copy(update={"config": edited}))
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="was trained with another config"):
        run_sweep(options.model_copy(update={"config": edited}))
    assert {p: p.read_text() for p in planned} == before  # the plan files are untouched
    raw["optimizer"]["lr"] = yaml.safe_load(options.config.read_text())["optimizer"]["lr"]
    raw["log_every"] = 2
    edited.write_text(yaml.safe_dump(raw))
    assert {r.status for r in plan_sweep(options.model_copy(update={"config": edited}))} == {"done"}


def test_a_sweep_does_not_reuse_runs_of_another_preparation(swept):
    """The dataset prepared again under the same path (here: one label voxel of one case
    changed): the finished runs trained on the old cases are refused, not reported as the new
    dataset's; with the old preparation back they are reused."""
    options, _ = swept
    data = Path(yaml.safe_load(options.config.read_text())["data"]["path"])
    label = sorted((data / "cases").glob("*_label.npy"))[0]
    kept = label.read_bytes()
    array = np.load(label)
    array[0, 0, 0] = 1 - min(int(array[0, 0, 0]), 1)
    np.save(label, array)
    try:
        with pytest.raises(ConfigError, match=r"sgd/all-s1 was trained on another preparation "
                           rf"of {data} \(its cases differ\): its results would be reported"):
            plan_sweep(options)
    finally:
        label.write_bytes(kept)
    assert {r.status for r in plan_sweep(options)} == {"done"}


class _Stop(Exception):
    pass


def test_interrupted_run_is_resumed_and_others_started(config, tmp_path):
    options = SweepOptions(config=config, optimizers=["sgd"], seeds=[3, 4], out=tmp_path / "sw")
    first = plan_sweep(options)[0]

    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(first.config, progress=stop)
    assert run_status(first.run_dir) == "resume"
    assert [r.status for r in plan_sweep(options)] == ["resume", "new"]
    report = run_sweep(options)
    assert [o.outcome for o in report.outcomes] == ["resumed", "trained"]
    metrics = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").open()]
    assert [m["iter"] for m in metrics if m["phase"] != "val"] == [1, 2, 3, 4]
    assert {run_status(r.run_dir) for r in plan_sweep(options)} == {"done"}


def test_a_crashing_run_is_recorded_and_the_sweep_goes_on(config, tmp_path, monkeypatch):
    """An unexpected error (a bug, CUDA running out of memory) in one run: that run fails
    with its one line and traceback file, the next runs still train, --status agrees."""
    options = SweepOptions(config=config, optimizers=["sgd"], seeds=[5, 6], out=tmp_path / "sw")
    real = train

    def crash_first(config: Any, **kwargs: Any) -> Any:
        if config.seed == 5:
            config.run_dir.mkdir(parents=True)
            raise ValueError("Expected more than 1 spatial element when training")
        return real(config, **kwargs)

    monkeypatch.setattr("hco_cli.workflows.sweep.train", crash_first)
    report = run_sweep(options)
    assert [o.outcome for o in report.outcomes] == ["failed", "trained"]
    failed = report.outcomes[0]
    assert failed.message.startswith("ValueError: Expected more than 1 spatial element")
    assert "ValueError" in (failed.run.run_dir / "traceback.txt").read_text()
    states = {name: json.loads(p.read_text())["state"] for name, p in
              (("s5", tmp_path / "sw/_jobs/sgd/all-s5.state.json"),
               ("s6", tmp_path / "sw/_jobs/sgd/all-s6.state.json"))}
    assert states == {"s5": "failed", "s6": "done"}


def test_a_run_stopped_by_ctrl_c_reads_interrupted_not_failed(config, tmp_path, monkeypatch):
    """Ctrl-C in a run of a local sweep: the sweep stops, the run's account says interrupted
    (nothing failed) and --status says what the next hco sweep does with it."""
    options = SweepOptions(config=config, optimizers=["sgd"], seeds=[7, 8], out=tmp_path / "sw")
    real = train

    def ctrl_c(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 1:
            raise KeyboardInterrupt

    def interrupted_first(config: Any, **kwargs: Any) -> Any:
        return real(config, progress=ctrl_c if config.seed == 7 else None, **kwargs)

    monkeypatch.setattr("hco_cli.workflows.sweep.train", interrupted_first)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(options)
    account = json.loads((tmp_path / "sw/_jobs/sgd/all-s7.state.json").read_text())
    assert (account["state"], account["message"]) == ("interrupted", "interrupted")
    stopped = run_state(options.out, "sgd", "all-s7")
    assert (stopped.state, stopped.detail) == (
        "interrupted", "stopped by Ctrl-C; hco sweep again resumes it from its last checkpoint")
    assert run_state(options.out, "sgd", "all-s8").state == "pending"  # never started
    (tmp_path / "sw/sgd/all-s7/checkpoints/last.pt").unlink()
    assert run_state(options.out, "sgd", "all-s7").detail == (
        "stopped by Ctrl-C before its first checkpoint; hco sweep again starts it")


def test_share_pretraining_and_evaluate(config, tmp_path):
    """Every arm, the baseline included, starts from one pre-training-only run."""
    options = SweepOptions(config=config, optimizers=["sgd", "sgd-hco"], seeds=[1],
                           folds=["L1U0"], out=tmp_path / "sw", share_pretraining=True,
                           evaluate=True)
    report = run_sweep(options)
    shared, *arms = (o.run.run_dir for o in report.outcomes)
    assert shared == tmp_path / "sw" / "_pretrain" / "L1U0-s1"
    info = json.loads((shared / "run.json").read_text())
    assert info["finished"] is True and info["iterations"]["selftrain"] == 0
    assert (shared / "checkpoints" / "pretrain.pt").is_file()
    assert not (shared / "eval").exists()  # nothing to evaluate in a pre-training run
    assert arms == [tmp_path / "sw" / "sgd" / "L1U0-s1", tmp_path / "sw" / "sgd-hco" / "L1U0-s1"]
    for arm in arms:
        saved = yaml.safe_load((arm / "config.yaml").read_text())
        assert saved["init_from"] == str(shared) and saved["data"]["fold"] == "L1U0"
        assert not (arm / "checkpoints" / "pretrain.pt").exists()  # it skipped pre-training
    for outcome in report.outcomes[1:]:
        summary = json.loads((outcome.run.run_dir / "eval/best/summary.json").read_text())
        per_class = [summary["mean"][c]["dice"] for c in ("1", "2")]
        assert outcome.test_dice == pytest.approx(sum(per_class) / 2)  # mean over classes
    assert [o.outcome for o in run_sweep(options).outcomes] == ["skipped"] * 3
    assert "_pretrain/" not in report.compare_command.replace(str(tmp_path), "")


def test_arms_with_options_lr_and_an_a_a_control(config, tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"arms": {
        "sgd": {"optimizer": "sgd"},
        "sgd-aa": {"optimizer": "sgd", "seed_offset": 1000},
        "r1": {"optimizer": "sgd-hco", "lr": 0.005, "options": {"refine_mask": "binary"}},
        "region": {"optimizer": "sgd", "framework": {"grad_split": "region"}},
    }}, sort_keys=False))
    options = SweepOptions(config=config, arms=load_arms(arms), seeds=[3], out=tmp_path / "sw",
                           share_pretraining=True)
    runs = {r.arm: r for r in plan_sweep(options)}
    assert list(runs) == ["_pretrain", "sgd", "sgd-aa", "r1", "region"]
    assert runs["_pretrain"].config.phases == ["pretrain"]
    assert runs["_pretrain"].config.seed == 3 and runs["sgd-aa"].config.seed == 1003
    assert {runs[a].init_from for a in ("sgd", "sgd-aa", "r1", "region")} == {
        runs["_pretrain"].run_dir}
    r1 = runs["r1"].config.optimizer
    assert (r1.name, r1.lr, r1.options["refine_mask"]) == ("sgd-hco", 0.005, "binary")
    assert r1.momentum == 0.9  # the config's hyperparameters are kept
    assert runs["region"].config.framework.grad_split == "region"  # type: ignore[union-attr]
    assert runs["sgd"].config.framework.grad_split == "source"  # type: ignore[union-attr]


@pytest.mark.parametrize(("arms", "text"), [
    ({"arms": {"x": {"optimizer": "sgd", "momentum": 0.5}}}, r"arms\.x\.momentum: unknown"),
    ({"arms": {"_x": {"optimizer": "sgd"}}}, "must be a non-empty folder name"),
    ({"arms": {}}, "expected one mapping 'arms'"),
    ({"arm": {"x": {"optimizer": "sgd"}}}, "expected one mapping 'arms'"),
])
def test_bad_arms_files(tmp_path, arms, text):
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump(arms))
    with pytest.raises(ConfigError, match=text):
        load_arms(path)


def test_a_reading_refused_by_its_optimizer_fails_at_plan_time(config, tmp_path):
    options = SweepOptions(config=config, seeds=[1], out=tmp_path / "sw", arms={
        "bad": Arm(optimizer="sgd-hco", options={"second_term": "increment"})})
    with pytest.raises(ConfigError, match="needs double_decay=False"):
        plan_sweep(options)


@pytest.mark.parametrize(("changes", "error", "text"), [
    ({"optimizers": ["sgd", "lion"]}, ConfigError, "Unknown optimizer 'lion'"),
    ({"optimizers": []}, ConfigError, "--optimizers is empty"),
    ({"seeds": []}, ConfigError, "--seeds is empty"),
    ({"seeds": [1, 1]}, ConfigError, "--seeds repeats 1"),
    ({"folds": ["L0U0", "L5U0"]}, DataError, "fold L5U0 does not exist"),
    ({"folds": ["fold1"]}, DataError, "not of the form L<i>U<j>"),
    ({"optimizers": ["sgd", "adam"], "share_pretraining": True}, ConfigError,
     "arm(s) adam use another optimizer family"),
])
def test_plan_errors(config, tmp_path, changes, error, text):
    raw = {"config": config, "optimizers": ["sgd"], "seeds": [1], "out": tmp_path, **changes}
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        plan_sweep(SweepOptions(**raw))


def test_config_training_on_several_processes_is_refused(config, tmp_path):
    raw = yaml.safe_load(config.read_text())
    raw["distributed"] = {"processes": 2}
    multi = tmp_path / "multi.yaml"
    multi.write_text(yaml.safe_dump(raw))
    options = SweepOptions(config=multi, optimizers=["sgd"], seeds=[1], out=tmp_path / "o")
    with pytest.raises(ConfigError, match=r"distributed\.processes = 2; a sweep trains one run"):
        plan_sweep(options)


def test_more_gpus_than_available_is_an_error(config, tmp_path):
    options = SweepOptions(config=config, optimizers=["sgd"], seeds=[1], out=tmp_path, gpus=64)
    with pytest.raises(ConfigError, match="--gpus 64: only"):
        run_sweep(options)


# ------------------------------------------------------------------------- runs per GPU
def test_runs_per_gpu_auto_is_one_on_the_cpu_and_a_given_count_is_kept(config, tmp_path):
    options = SweepOptions(config=config, optimizers=["sgd"], seeds=[1], out=tmp_path)
    runs = plan_sweep(options)
    assert options.runs_per_gpu == "auto"  # the default
    assert resolve_runs_per_gpu(options, runs) == (1, "auto: training on the CPU")
    given = options.model_copy(update={"runs_per_gpu": 3})
    assert resolve_runs_per_gpu(given, runs) == (3, "--runs-per-gpu")


def test_runs_per_gpu_auto_shares_a_gpu_where_two_runs_fit(config, tmp_path, monkeypatch):
    raw = yaml.safe_load(config.read_text())
    raw["device"] = raw["data"]["device"] = "auto"  # CUDA, were one there; data on the GPU
    gpu_config = tmp_path / "gpu.yaml"
    gpu_config.write_text(yaml.safe_dump(raw))
    options = SweepOptions(config=gpu_config, optimizers=["sgd", "adam"], seeds=[1],
                           out=tmp_path / "sw")
    runs = plan_sweep(options)
    # The memory of a run: the planner's model of the iteration (4-filter V-Net on 32x32x16
    # patches, BCP's 2 + 2 batch of the tiny config) plus every stored case as float32 images
    # and int32 labels (8 phantoms of 32x32x24; the 2 unlabeled ones store no label), plus the
    # process's share.
    need = {r.optimizer: run_memory_bytes(r.config) for r in runs}
    on_cpu = {r.optimizer: run_memory_bytes(r.config.model_copy(update={"data": r.config.data
              .model_copy(update={"device": "cpu"})})) for r in runs}
    stored = 32 * 32 * 24 * (8 * 4 + 6 * 4)
    assert {k: need[k] - on_cpu[k] for k in need} == {"sgd": stored, "adam": stored}
    assert need["adam"] > need["sgd"] > stored + PROCESS_BYTES  # Adam keeps two moments
    largest = need["adam"]
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    for memory, expected in ((2 * largest, 2), (2 * largest - 1, 1)):
        monkeypatch.setattr("torch.cuda.get_device_properties",
                            lambda index, memory=memory: SimpleNamespace(total_memory=memory))
        per_gpu, why = resolve_runs_per_gpu(options, runs)
        assert per_gpu == expected, why
        assert why.startswith(f"auto: 2 runs of up to {largest / 2**30:.1f} GiB")
    # CUDA graphs: one run already keeps the GPU busy, however much memory there is
    graphs = [replace(r, config=r.config.model_copy(
        update={"compile": "reduce-overhead"})) if r.optimizer == "sgd" else r for r in runs]
    assert resolve_runs_per_gpu(options, graphs) == (
        1, "auto: CUDA graphs (compile: reduce-overhead) keep one run's GPU busy")


# ------------------------------------------------------------------- multi-GPU scheduling
class _FakeJob:
    """Finishes after ``ticks`` polls with ``code``."""

    def __init__(self, run: SweepRun, ticks: int, code: int, log: list[str]) -> None:
        self.run, self.ticks, self.code, self.log = run, ticks, code, log

    def poll(self) -> int | None:
        self.ticks -= 1
        if self.ticks > 0:
            return None
        self.log.append(f"end {self.run.run_dir.name}/{self.run.arm}")
        return self.code


def _grid(root: Path, *, statuses: dict[str, str] | None = None) -> list[SweepRun]:
    """2 seeds x (a pre-training base + sgd, sgd-hco dependents); no configs needed."""
    runs = []
    for seed in (1, 2):
        base = root / "_pretrain" / f"all-s{seed}"
        for name in ("_pretrain", "sgd", "sgd-hco"):
            run_dir = root / name / f"all-s{seed}"
            runs.append(SweepRun(run_dir=run_dir, arm=name, optimizer=name, seed=seed, fold=None,
                                 status=(statuses or {}).get(f"{name}-{seed}", "new"),
                                 init_from=None if name == "_pretrain" else base,
                                 config=None,  # type: ignore[arg-type]
                                 config_file=root / "_configs" / name / f"all-s{seed}.yaml"))
    return runs


def _run_schedule(runs: list[SweepRun], *, workers: int, fail: set[str] = frozenset()):
    log: list[str] = []

    def launch(run: SweepRun, slot: int) -> _FakeJob:
        log.append(f"start {run.run_dir.name}/{run.arm} on {slot}")
        key = f"{run.arm}-{run.seed}"
        return _FakeJob(run, 3, 1 if key in fail else 0, log)

    codes = schedule(runs, workers=workers, launch=launch,
                     needs_work=lambda r: r.status != "done", wait=lambda: None)
    return log, codes


def test_schedule_runs_bases_first_and_dependents_once_their_base_ended(tmp_path):
    log, codes = _run_schedule(_grid(tmp_path), workers=2)
    assert log[:2] == ["start all-s1/_pretrain on 0", "start all-s2/_pretrain on 1"]
    assert log.index("start all-s1/sgd on 0") > log.index("end all-s1/_pretrain")
    assert all(code == 0 for code in codes.values()) and len(codes) == 6
    starts = [entry for entry in log if entry.startswith("start")]
    assert len(starts) == 6
    assert {int(e[-1]) for e in starts} == {0, 1}


def test_schedule_dependents_wait_for_the_base_exit(tmp_path):
    log, _ = _run_schedule(_grid(tmp_path), workers=3)
    # Three slots: the third stays free until a base has ended.
    assert log[:2] == ["start all-s1/_pretrain on 0", "start all-s2/_pretrain on 1"]
    first_dependent = next(i for i, e in enumerate(log) if "/sgd" in e and "start" in e)
    assert first_dependent > log.index("end all-s1/_pretrain")


def test_schedule_failed_base_cancels_its_dependents(tmp_path):
    log, codes = _run_schedule(_grid(tmp_path), workers=1, fail={"_pretrain-1"})
    assert codes[tmp_path / "_pretrain" / "all-s1"] == 1
    assert codes[tmp_path / "sgd-hco" / "all-s1"] is None
    assert codes[tmp_path / "sgd" / "all-s1"] is None
    assert not any("all-s1/sgd" in e for e in log)
    assert codes[tmp_path / "sgd-hco" / "all-s2"] == 0


def test_schedule_skips_done_runs_and_their_dependents_start_at_once(tmp_path):
    runs = _grid(tmp_path, statuses={"_pretrain-1": "done", "_pretrain-2": "done",
                                     "sgd-2": "done"})
    log, codes = _run_schedule(runs, workers=2)
    assert log[:2] == ["start all-s1/sgd on 0", "start all-s1/sgd-hco on 1"]
    assert set(codes) == {tmp_path / n / s for n, s in
                          [("sgd", "all-s1"), ("sgd-hco", "all-s1"), ("sgd-hco", "all-s2")]}


def test_train_argv_for_new_resumed_and_evaluated_runs(config, tmp_path):
    options = SweepOptions(config=config, optimizers=["sgd", "sgd-hco"], seeds=[7],
                           folds=["L0U0"], out=tmp_path / "sw", share_pretraining=True,
                           evaluate=True, lcc=True)
    base, _, dependent = plan_sweep(options)
    assert base.config.device == "cpu"  # one GPU: the config's device, in process
    [train_cmd, predict_cmd] = train_argv(dependent, options)
    assert train_cmd == [sys.executable, "-m", "hco_cli", "train", "--config",
                         str(dependent.config_file), "--force"]
    assert (dependent.config.optimizer.name, dependent.config.seed) == ("sgd-hco", 7)
    assert dependent.config.init_from == base.run_dir
    # evaluated where it trained (a CUDA-less machine evaluated on CUDA after training here)
    assert predict_cmd[3:] == ["predict", str(dependent.run_dir), "--split", "test",
                               "--evaluate", "--device", "cpu", "--force", "--lcc"]
    assert train_argv(base, options) == [train_argv(base, options)[0]]  # never evaluated
    resumed = replace(dependent, status="resume")
    assert train_argv(resumed, options)[0][3:] == ["train", "--resume", str(dependent.run_dir)]
    with pytest.raises(HcoError):
        plan_sweep(SweepOptions(config=tmp_path / "missing.yaml", optimizers=["sgd"],
                                seeds=[1], out=tmp_path))


def test_sample_arms_files_load_and_plan(config, tmp_path):
    """Every arms file in sample_configs/arms is valid, and its optimizers accept the options."""
    paths = sorted((ROOT / "sample_configs" / "arms").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        arms = load_arms(path)
        runs = plan_sweep(SweepOptions(config=config, arms=arms, seeds=[1], out=tmp_path / "p"))
        assert [r.arm for r in runs] == list(arms), path.name


def test_ablation_arm_names_mean_one_arm_in_every_file():
    """The ablation's rounds and the full-protocol study pool by glob over arm folders
    (results/ablation/round*/NAME, results/la-full/*/*/NAME), so an
    arm name must stand for the same optimizer, options and framework in every arms file."""
    arms = ROOT / "sample_configs" / "arms"
    paths = sorted([*arms.glob("la_ablation*.yaml"), *arms.glob("la_full*.yaml")])
    assert len(paths) >= 10
    seen: dict[str, tuple[str, object]] = {}
    for path in paths:
        for name, arm in load_arms(path).items():
            first = seen.setdefault(name, (path.name, arm))
            assert first[1] == arm, f"{name}: {first[0]} and {path.name} differ"
    assert {"sgd", "hco-r3", "hco-r4", "sgd-co", "hco-r1-region"} <= set(seen)


def test_an_interrupted_schedule_stops_the_runs_it_started(tmp_path):
    """Ctrl-C (or SIGTERM, which hco sweep turns into it) while two runs train as subprocesses:
    both get SIGINT, as a terminal's Ctrl-C would give them, and have ended when the sweep
    re-raises, each recorded with its exit code and as stopped; none trains on unseen."""
    ended: dict[str, tuple[int, bool]] = {}
    jobs: list[_Chain] = []

    def launch(run: SweepRun, index: int) -> _Chain:
        job = _Chain([[sys.executable, "-c", "import time; time.sleep(120)"]], env=dict(os.environ),
                     log=tmp_path / f"{run.arm}.log",
                     on_exit=lambda code, stopped, key=run.run_dir.name: ended.__setitem__(
                         key, (code, stopped)))
        jobs.append(job)
        return job

    def wait() -> None:
        raise KeyboardInterrupt

    runs = [r for r in _grid(tmp_path) if r.arm == "_pretrain"]  # two runs, no dependents
    with pytest.raises(KeyboardInterrupt):
        schedule(runs, workers=2, launch=launch, needs_work=lambda r: True, wait=wait)
    assert len(jobs) == 2 and all(job.proc is not None and job.proc.poll() is not None
                                  for job in jobs)
    assert sorted(ended) == ["all-s1", "all-s2"]
    # each ended by the stop (the launcher records such a run interrupted, not failed)
    assert all(code != 0 and stopped for code, stopped in ended.values())


# A training command as the sweep starts it: it counts the SIGINTs it gets (in a file), starts
# one worker of its own that does the same (a data-parallel run's), and after the first one
# waits a second for a second one before exiting as hco does on Ctrl-C.
_COUNTING = r"""
import os, signal, subprocess, sys, time
from pathlib import Path
out, worker = Path(sys.argv[1]), len(sys.argv) > 2
count = 0
def on_sigint(signum, frame):
    global count
    count += 1
    out.write_text(str(count))
signal.signal(signal.SIGINT, on_sigint)
if worker:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(out) + ".worker"])
    while not Path(str(out) + ".worker.ready").exists():
        time.sleep(0.02)
out.with_name(out.name + ".ready").write_text(str(os.getpid()))
end = time.time() + 60
while not count and time.time() < end:
    time.sleep(0.02)
time.sleep(1.0)
if worker:
    child.wait()
sys.exit(130)
"""

# The sweep: one command in a _Chain, stopped on Ctrl-C as hco sweep stops its runs.
_SWEEP = r"""
import os, sys, time
from pathlib import Path
from hco_cli.workflows.sweep import _Chain
out, counting = Path(sys.argv[1]), sys.argv[2]
job = _Chain([[sys.executable, "-c", counting, str(out), counting]], env=dict(os.environ),
             log=out.with_name("run.log"))
try:
    while True:
        time.sleep(0.02)
except KeyboardInterrupt:
    job.stop()
    job.wait_stopped(time.monotonic() + 30)
    sys.exit(0 if job.proc.returncode == 130 else 1)
"""


@contextlib.contextmanager
def _counting_sweep(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The sweep script in a session of its own, once its run and the run's worker count
    SIGINTs; whatever is left of them is killed on the way out."""
    out = tmp_path / "count"
    sweep = subprocess.Popen([sys.executable, "-c", _SWEEP, str(out), _COUNTING],
                             start_new_session=True, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "count.ready").exists():
            assert sweep.poll() is None and time.monotonic() < deadline, "never got ready"
            time.sleep(0.02)
        yield sweep
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, ValueError):  # the run's own group
            os.killpg(int((tmp_path / "count.ready").read_text()), signal.SIGKILL)


def test_ctrl_c_at_the_terminal_reaches_each_run_process_once(tmp_path):
    """The terminal's Ctrl-C goes to the sweep's process group; the sweep passes one SIGINT
    to each run's whole process group (its workers too), so no process gets two (a second
    one would interrupt the run's own handling of the first)."""
    with _counting_sweep(tmp_path) as sweep:
        os.killpg(sweep.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert sweep.wait(60) == 0
    assert (tmp_path / "count").read_text() == "1"
    assert (tmp_path / "count.worker").read_text() == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sweep_killed_outright_stops_its_runs_as_ctrl_c_would(tmp_path):
    """SIGKILL of the sweep (no handler can run): each run still gets one SIGINT, from the
    kernel, and stops instead of training on unwatched."""
    out = tmp_path / "count"
    with _counting_sweep(tmp_path) as sweep:
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(10)
        deadline = time.monotonic() + 20
        # the count is written by truncating and writing: wait for its text, not the file
        while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.read_text() == "1"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sweep_turns_sigterm_and_sighup_into_ctrl_c_inside_its_block(signum):
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signum) is before


def test_each_run_is_told_the_sweeps_pid(config, tmp_path, monkeypatch):
    """A run's environment names the sweep (PARENT_ENV), so that where the kernel has no
    death signal the run's hco command still stops when the sweep dies; its GPU is set too."""
    options = SweepOptions(config=config, optimizers=["sgd"], seeds=[7], folds=["L0U0"],
                           out=tmp_path / "sw")
    [run] = plan_sweep(options)
    envs = []
    monkeypatch.setattr("hco_cli.workflows.sweep._Chain",
                        lambda commands, *, env, log, on_exit: envs.append(env))
    SubprocessLauncher(options)(run, 0)
    assert envs[0][PARENT_ENV] == str(os.getpid())
    assert envs[0]["CUDA_VISIBLE_DEVICES"] == (os.environ.get("CUDA_VISIBLE_DEVICES") or "0")
