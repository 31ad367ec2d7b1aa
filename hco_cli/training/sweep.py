"""A grid of training runs (arms x seeds x folds) that can be stopped and started again.

An *arm* is what a study compares: an optimizer with its options, a learning rate, framework
settings, or the same optimizer with other random streams (an A/A control). Runs live at
``OUT/<arm>/<fold or 'all'>-s<seed>``, so ``hco compare 'sgd=OUT/sgd/*' 'sgd-hco=OUT/sgd-hco/*'``
reads a sweep as it stands. The plan writes each run's resolved config to
``OUT/_configs/<arm>/<fold>-s<seed>.yaml``, and every executor trains that file: in this
process one run after another, or ``python -m hco_cli train --config FILE`` subprocesses on
several GPUs (``runs_per_gpu`` at a time on each). Each run is skipped when its run.json says
finished, resumed from ``last.pt`` when one exists, and started afresh otherwise.

With ``share_pretraining`` (BCP) each (seed, fold) first trains a pre-training-only run at
``OUT/_pretrain/<fold>-s<seed>`` with the config's plain optimizer; every arm, the baseline
included, starts from its ``pretrain.pt`` by the same path (``init_from``), and starts only once
that run has finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hco_cli.config import TrainConfig, describe_error, validate_config
from hco_cli.data.dataset import PreparedDataset
from hco_cli.errors import ConfigError, HcoError
from hco_cli.io_utils import write_text
from hco_cli.optim import optimizer_info
from hco_cli.training.presets import Overrides, build_config, load_yaml
from hco_cli.training.run_dir import checkpoint_path

PlanStatus = Literal["done", "resume", "new"]
Outcome = Literal["skipped", "resumed", "trained", "failed"]
LOG_DIR = "_logs"
CONFIG_DIR = "_configs"
PRETRAIN_ARM = "_pretrain"


class Arm(BaseModel):
    """One arm of a study: what its runs change in the sweep's config."""

    model_config = ConfigDict(extra="forbid")

    optimizer: str
    lr: float | None = Field(default=None, gt=0, description="learning rate (default: config's)")
    options: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="optimizer keywords, e.g. refine_mask: binary")
    framework: dict[str, Any] = Field(
        default_factory=dict, description="framework settings, e.g. grad_split: region")
    seed_offset: int = Field(default=0, description="streams of seed + offset (A/A control); "
                             "the shared pre-training stays that of the seed")


class SweepOptions(BaseModel):
    """What ``hco sweep`` runs: one config file across arms, seeds and folds."""

    model_config = ConfigDict(extra="forbid")

    config: Path
    optimizers: list[str] = Field(default_factory=list, description="one arm per optimizer")
    arms: dict[str, Arm] = Field(default_factory=dict, description="named arms (--arms FILE)")
    seeds: list[int]
    folds: list[str] = Field(default_factory=list, description="empty: the config's data")
    out: Path
    share_pretraining: bool = False
    evaluate: bool = False
    lcc: bool = False
    gpus: int = Field(default=1, ge=1)
    runs_per_gpu: int = Field(default=1, ge=1)

    def arm_table(self) -> dict[str, Arm]:
        """The named arms, or one arm per optimizer named after it."""
        if self.arms and self.optimizers:
            raise ConfigError("give --optimizers or --arms, not both")
        if self.arms:
            return dict(self.arms)
        return {name: Arm(optimizer=name) for name in _unique("--optimizers", self.optimizers)}

    @property
    def workers(self) -> int:
        return self.gpus * self.runs_per_gpu


def load_arms(path: Path) -> dict[str, Arm]:
    """Read an arms file: ``arms: {NAME: {optimizer: ..., lr: ..., options: {...}}, ...}``."""
    raw = load_yaml(path)
    arms = raw.get("arms") if isinstance(raw, dict) else None
    if not isinstance(arms, dict) or not arms or set(raw) != {"arms"}:
        raise ConfigError(f"{path}: expected one mapping 'arms' of NAME: {{optimizer: ...}}")
    out = {}
    for name, spec in arms.items():
        if not isinstance(name, str) or not name or name.startswith("_") or "/" in name:
            raise ConfigError(f"{path}: arm name {name!r} must be a non-empty folder name not "
                              "starting with '_'")
        try:
            out[name] = Arm.model_validate(spec)
        except ValidationError as exc:
            raise ConfigError(f"{path}: arms.{name}.{describe_error(exc)}") from None
    return out


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid: where it lives, what it trains, and what the sweep will do."""

    run_dir: Path
    arm: str
    optimizer: str
    seed: int
    fold: str | None
    status: PlanStatus
    init_from: Path | None
    config: TrainConfig
    config_file: Path


@dataclass
class RunOutcome:
    """What happened to one run, read back from its run.json and eval summary."""

    run: SweepRun
    outcome: Outcome
    message: str = ""
    best_dice: float | None = None
    wall_seconds: float | None = None
    test_dice: float | None = None  # mean over classes of summary.json's mean Dice


@dataclass
class SweepReport:
    """Every run's outcome and the ``hco compare`` command that reads the sweep."""

    out: Path
    outcomes: list[RunOutcome]
    compare_command: str

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]


SweepProgress = Callable[[str, SweepRun], None]
"""Called as ``progress(action, run)`` before each run is trained, resumed or evaluated."""


class Job(Protocol):
    """A launched run: ``poll()`` is None while it works, then its exit code."""

    def poll(self) -> int | None: ...


Launcher = Callable[[SweepRun, int], Job]
"""Starts ``run`` on worker slot ``index`` and returns its job."""


# ------------------------------------------------------------------------------------ plan
def plan_sweep(options: SweepOptions) -> list[SweepRun]:
    """Validate the grid and state each run's folder, config and status; trains nothing."""
    if options.gpus > 1:
        _check_gpus(options.gpus)
    arms = options.arm_table()
    seeds = _unique("--seeds", options.seeds)
    folds = _unique("--folds", options.folds) if options.folds else []
    for arm in arms.values():
        optimizer_info(arm.optimizer)  # ConfigError naming the valid optimizers
    base = build_config(config_file=options.config)
    if base.distributed.processes > 1:
        raise ConfigError(f"{options.config}: distributed.processes = "
                          f"{base.distributed.processes}; a sweep trains one run per GPU, so "
                          "its config must train on one process")
    if folds:
        splits = PreparedDataset(base.data.path).splits
        for fold in folds:
            splits.resolve(fold)  # DataError naming the dataset's fold grid
    if options.share_pretraining:
        _check_shareable(base, arms)
    device = "cuda" if options.gpus > 1 else None
    runs = []
    for fold in folds or [base.data.fold]:
        for seed in seeds:
            shared: Path | None = None
            if options.share_pretraining:
                shared = _cell_dir(options.out, PRETRAIN_ARM, fold, seed)
                config = _resolve(options.config, base.optimizer.model_dump(mode="json"),
                                  Overrides(seed=seed, fold=fold, run_dir=shared,
                                            device=device), phases=["pretrain"])
                runs.append(_run(options.out, PRETRAIN_ARM, seed, fold, config, None))
            for name, arm in arms.items():
                run_dir = _cell_dir(options.out, name, fold, seed)
                config = _resolve(options.config, _optimizer_section(base, arm), Overrides(
                    seed=seed + arm.seed_offset, fold=fold, run_dir=run_dir, device=device,
                    init_from=shared), framework=arm.framework)
                runs.append(_run(options.out, name, seed, fold, config, shared))
    return runs


def _cell_dir(out: Path, arm: str, fold: str | None, seed: int) -> Path:
    return Path(out) / arm / f"{fold or 'all'}-s{seed}"


def _run(out: Path, arm: str, seed: int, fold: str | None, config: TrainConfig,
         init_from: Path | None) -> SweepRun:
    assert config.run_dir is not None
    run_dir = config.run_dir
    return SweepRun(run_dir=run_dir, arm=arm, optimizer=config.optimizer.name, seed=seed,
                    fold=fold, status=run_status(run_dir), init_from=init_from, config=config,
                    config_file=Path(out) / CONFIG_DIR / arm / f"{run_dir.name}.yaml")


def _optimizer_section(base: TrainConfig, arm: Arm) -> dict[str, Any]:
    """The config's optimizer section changed by the arm (hyperparameters kept when the arm's
    optimizer accepts them: an arm of another family starts from its own defaults)."""
    section = base.optimizer.model_dump(mode="json", exclude_none=True)
    accepted = set(optimizer_info(arm.optimizer).hyperparameters)
    section = {k: v for k, v in section.items() if k in accepted}
    options = {k: v for k, v in section.pop("options", {}).items() if k in accepted}
    section.update(name=arm.optimizer, options={**options, **arm.options})
    if arm.lr is not None:
        section["lr"] = arm.lr
    return section


def _resolve(config_file: Path, optimizer: dict[str, Any], overrides: Overrides, *,
             framework: dict[str, Any] | None = None,
             phases: list[str] | None = None) -> TrainConfig:
    """The config file with the sweep's overrides, the arm's optimizer and framework keys."""
    config = build_config(config_file=config_file, overrides=overrides)
    raw = config.model_dump(mode="json")
    raw["optimizer"] = optimizer
    raw["framework"] = {**raw["framework"], **(framework or {})}
    if phases is not None:
        raw["phases"] = phases
    return validate_config(raw, source=str(config_file))


def write_plan(runs: Sequence[SweepRun]) -> None:
    """Write every run's resolved config (atomically), the file each executor trains."""
    for run in runs:
        run.config_file.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False)
        if not run.config_file.is_file() or run.config_file.read_text(encoding="utf-8") != text:
            write_text(run.config_file, text)


def _unique(option: str, values: Sequence[Any]) -> list[Any]:
    if not values:
        raise ConfigError(f"{option} is empty; give at least one value")
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"{option} repeats {', '.join(repeated)}")
    return list(values)


def _check_shareable(base: TrainConfig, arms: dict[str, Arm]) -> None:
    """Sharing is sound only where pre-training is identical: BCP, the config's family."""
    if base.framework.name != "bcp":
        raise ConfigError(f"--share-pretraining needs a BCP config; {base.framework.name} has no "
                          "pre-training phase to share")
    if base.init_from is not None:
        raise ConfigError("--share-pretraining: the config already sets init_from")
    # BCP pre-trains with the family's plain optimizer: the config's, for every arm.
    family = optimizer_info(base.optimizer.name).family
    others = sorted({name for name, arm in arms.items()
                     if optimizer_info(arm.optimizer).family != family})
    if others:
        raise ConfigError(f"--share-pretraining pre-trains with the config's {family}; arm(s) "
                          f"{', '.join(others)} use another optimizer family")


def run_status(run_dir: Path) -> PlanStatus:
    """``done`` if run.json says finished, ``resume`` if last.pt exists, else ``new``."""
    info = _read_json(Path(run_dir) / "run.json")
    if info.get("finished") is True:
        return "done"
    return "resume" if checkpoint_path(run_dir, "last").is_file() else "new"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def compare_command(runs: Sequence[SweepRun], out: Path) -> str:
    """The ``hco compare`` line that reads the sweep, one group per arm."""
    names = dict.fromkeys(r.arm for r in runs if r.arm != PRETRAIN_ARM)
    return "hco compare " + " ".join(f"'{n}={Path(out) / n}/*'" for n in names)


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / "eval" / "best" / "summary.json"


def needs_evaluation(run: SweepRun, options: SweepOptions) -> bool:
    return (options.evaluate and run.arm != PRETRAIN_ARM
            and not summary_path(run.run_dir).is_file())


# ------------------------------------------------------------------------------ execute
def run_sweep(options: SweepOptions, *, progress: SweepProgress | None = None,
              launch: Launcher | None = None, poll_seconds: float = 5.0) -> SweepReport:
    """Plan the grid and bring every run to finished (and evaluated, if asked)."""
    runs = plan_sweep(options)
    write_plan(runs)
    if options.workers > 1:
        launcher = launch or SubprocessLauncher(options)
        codes = schedule(runs, workers=options.workers, launch=launcher,
                         needs_work=lambda r: r.status != "done" or needs_evaluation(r, options),
                         wait=lambda: time.sleep(poll_seconds))
        outcomes = [_outcome_from_code(r, codes.get(r.run_dir), options) for r in runs]
    else:
        outcomes = _run_in_process(runs, options, progress or (lambda action, run: None))
    return SweepReport(out=Path(options.out), outcomes=outcomes,
                       compare_command=compare_command(runs, options.out))


def _check_gpus(gpus: int) -> None:
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > available:
        raise ConfigError(f"--gpus {gpus}: only {available} CUDA device(s) are available")


def _run_in_process(runs: list[SweepRun], options: SweepOptions,
                    progress: SweepProgress) -> list[RunOutcome]:
    """Run the grid one after another in this process; a failed base fails its dependents."""
    from hco_cli.inference.predict import PredictOptions, predict
    from hco_cli.training.loop import resume, train

    failed: set[Path] = set()
    outcomes = []
    done: dict[PlanStatus, Outcome] = {"done": "skipped", "resume": "resumed", "new": "trained"}
    for run in runs:
        if run.init_from is not None and run.init_from in failed:
            outcomes.append(RunOutcome(run, "failed", f"base run {run.init_from} failed"))
            failed.add(run.run_dir)
            continue
        try:
            if run.status == "resume":
                progress("resume", run)
                resume(run.run_dir)
            elif run.status == "new":
                progress("train", run)
                # No last.pt: whatever an earlier attempt left holds nothing to resume.
                train(build_config(config_file=run.config_file), force=True)
        except HcoError as exc:
            failed.add(run.run_dir)
            outcomes.append(_read_outcome(run, "failed", str(exc)))
            continue
        try:
            if needs_evaluation(run, options):
                progress("evaluate", run)
                preds = run.run_dir / "eval" / "best" / "preds"
                predict(run.run_dir, PredictOptions(split="test", evaluate=True, lcc=options.lcc,
                                                    device=run.config.device,
                                                    force=preds.exists()))
        except HcoError as exc:  # trained, so dependents may still use its pretrain.pt
            outcomes.append(_read_outcome(run, "failed", f"evaluation: {exc}"))
            continue
        outcomes.append(_read_outcome(run, done[run.status]))
    return outcomes


def _read_outcome(run: SweepRun, outcome: Outcome, message: str = "") -> RunOutcome:
    info = _read_json(run.run_dir / "run.json")
    best = info.get("best") or {}
    summary = _read_json(summary_path(run.run_dir))
    means = [v for v in (summary.get("mean") or {}).values() if isinstance(v, dict)]
    dice = [float(m["dice"]) for m in means if isinstance(m.get("dice"), (int, float))]
    return RunOutcome(run=run, outcome=outcome, message=message,
                      best_dice=best.get("score"), wall_seconds=info.get("wall_seconds"),
                      test_dice=sum(dice) / len(dice) if dice else None)


def _outcome_from_code(run: SweepRun, code: int | None, options: SweepOptions) -> RunOutcome:
    log = log_path(options.out, run)
    if code is None and run.status == "done" and not needs_evaluation(run, options):
        return _read_outcome(run, "skipped")
    if code is None:
        return _read_outcome(run, "failed", f"not started: base run {run.init_from} failed")
    if code != 0:
        return _read_outcome(run, "failed", f"exit code {code}; see {log}")
    done: dict[PlanStatus, Outcome] = {"done": "skipped", "resume": "resumed", "new": "trained"}
    return _read_outcome(run, done[run.status])


# ---------------------------------------------------------------------- multi-GPU path
def schedule(runs: Sequence[SweepRun], *, workers: int, launch: Launcher,
             needs_work: Callable[[SweepRun], bool],
             wait: Callable[[], None]) -> dict[Path, int | None]:
    """Run jobs on ``workers`` slots, in grid order, each dependent after its base finished.

    A dependent is ready once its base (the shared pre-training run) exited 0 in this sweep or
    had finished before it; if the base fails, the dependent is never started (code None).
    Returns each launched run's exit code.
    """
    by_dir = {r.run_dir: r for r in runs}
    pending = [r for r in runs if needs_work(r)]
    codes: dict[Path, int | None] = {}
    running: dict[int, tuple[SweepRun, Job]] = {}
    launched: set[Path] = set()
    while pending or running:
        for slot, (run, job) in list(running.items()):
            code = job.poll()
            if code is not None:
                codes[run.run_dir] = code
                del running[slot]
        for run in list(pending):
            base = by_dir.get(run.init_from) if run.init_from is not None else None
            state = "ready" if base is None else _base_state(base, codes, launched)
            if state == "failed":
                pending.remove(run)
                codes[run.run_dir] = None
            elif state == "ready":
                free = [s for s in range(workers) if s not in running]
                if not free:
                    break
                pending.remove(run)
                launched.add(run.run_dir)
                running[free[0]] = (run, launch(run, free[0]))
        if running:
            wait()
        elif pending:  # cannot happen: every base precedes its dependents in grid order
            raise HcoError(f"sweep: {pending[0].run_dir} waits for a base that never runs")
    return codes


def _base_state(base: SweepRun, codes: dict[Path, int | None],
                launched: set[Path]) -> Literal["ready", "wait", "failed"]:
    if base.run_dir in codes:
        return "ready" if codes[base.run_dir] == 0 else "failed"
    if base.run_dir not in launched:
        # Not launched in this sweep: ready only if it needs no work (finished earlier).
        return "ready" if base.status == "done" else "wait"
    return "wait"


def log_path(out: Path, run: SweepRun) -> Path:
    return Path(out) / LOG_DIR / run.arm / f"{run.run_dir.name}.log"


def train_argv(run: SweepRun, options: SweepOptions) -> list[list[str]]:
    """The ``python -m hco_cli`` commands that bring ``run`` to finished and evaluated."""
    hco = [sys.executable, "-m", "hco_cli"]
    commands = []
    if run.status == "resume":
        commands.append([*hco, "train", "--resume", str(run.run_dir)])
    elif run.status == "new":
        commands.append([*hco, "train", "--config", str(run.config_file), "--force"])
    if needs_evaluation(run, options):
        commands.append([*hco, "predict", str(run.run_dir), "--split", "test", "--evaluate",
                         "--device", "cuda", "--force", *(["--lcc"] if options.lcc else [])])
    return commands


class SubprocessLauncher:
    """Starts a run's commands one after another on one GPU, output appended to its log.

    Worker slot ``index`` runs on GPU ``index % gpus``, so with ``runs_per_gpu`` K each GPU
    holds K runs at a time.
    """

    def __init__(self, options: SweepOptions) -> None:
        self.options = options
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.devices = visible.split(",") if visible else [str(i) for i in range(options.gpus)]

    def __call__(self, run: SweepRun, index: int) -> Job:
        log = log_path(self.options.out, run)
        log.parent.mkdir(parents=True, exist_ok=True)
        device = self.devices[index % self.options.gpus]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
        return _Chain(train_argv(run, self.options), env=env, log=log)


class _Chain:
    """Sequential subprocesses; the first non-zero exit code ends the chain."""

    def __init__(self, commands: list[list[str]], *, env: dict[str, str], log: Path) -> None:
        self.commands, self.env, self.log = list(commands), env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self._next()

    def _next(self) -> None:
        command = self.commands.pop(0)
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(command, env=self.env, stdout=sink,
                                         stderr=subprocess.STDOUT)

    def poll(self) -> int | None:
        assert self.proc is not None  # set in __init__
        code = self.proc.poll()
        if code == 0 and self.commands:
            self._next()
            return None
        return code


__all__ = ["Arm", "RunOutcome", "SubprocessLauncher", "SweepOptions", "SweepReport", "SweepRun",
           "compare_command", "load_arms", "plan_sweep", "run_status", "run_sweep", "schedule",
           "train_argv", "write_plan"]
