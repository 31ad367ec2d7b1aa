"""A sweep's plan: a grid of training runs (arms x seeds x folds), each a resolved config file.

An *arm* is what a study compares: an optimizer with its options, a learning rate, framework
settings, or the same optimizer with other random streams (an A/A control). Runs live at
``OUT/<arm>/<fold or 'all'>-s<seed>``, so ``hco compare 'sgd=OUT/sgd/*' 'sgd-hco=OUT/sgd-hco/*'``
reads a sweep as it stands. The plan writes each run's resolved config to
``OUT/_configs/<arm>/<fold>-s<seed>.yaml`` (its tracking sinks and Slurm resources included),
the single source every executor trains (:mod:`hco_cli.workflows.sweep` on this machine,
:mod:`hco_cli.workflows.sweep_submit` through submitit). Each run is skipped when its run.json
says finished, resumed from ``last.pt`` when one exists, and started afresh otherwise.

With ``share_pretraining`` (BCP) each (seed, fold) first trains a pre-training-only run at
``OUT/_pretrain/<fold>-s<seed>`` with the config's plain optimizer; every arm, the baseline
included, starts from its ``pretrain.pt`` by the same path (``init_from``), and starts only once
that run has finished.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hco_cli.config import TrainConfig, describe_error, validate_config, with_absolute_paths
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.identity import DatasetIdentity, changed_parts, dataset_identity
from hco_cli.errors import ConfigError
from hco_cli.io_utils import write_text
from hco_cli.models.layout import DEFAULT_STRIDES
from hco_cli.optim import optimizer_info
from hco_cli.planning.memory import FRAMEWORKS, GIB, NetworkShape, estimate_memory
from hco_cli.runs.folder import read_config_data, read_run_info
from hco_cli.runs.layout import RunFolder
from hco_cli.training.presets import Overrides, build_config, load_yaml
from hco_cli.training.run_guard import config_changes, describe_changes, under
from hco_cli.training.tracking import check_available as check_sinks
from hco_cli.workflows.sweep_status import CONFIG_DIR, PRETRAIN_ARM, read_json, summary_path

PlanStatus = Literal["done", "resume", "new"]
Executor = Literal["local", "slurm", "submitit-local"]
AUTO = "auto"
AUTO_RUNS_PER_GPU = 2
PROCESS_BYTES = 1 * GIB  # a training process's CUDA context, cuDNN handles, allocator slack
# The Slurm resources a sweep's options may change in every run's config (--partition, ...).
SLURM_OPTIONS = ("partition", "gpus_per_run", "time", "mem")


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
    runs_per_gpu: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="runs sharing each GPU; auto: see resolve_runs_per_gpu")
    executor: Executor = "local"
    log: list[str] | None = Field(default=None, description="tracking sinks of every run "
                                  "(None: the config's)")
    slurm: dict[str, Any] = Field(default_factory=dict, description="changes to the config's "
                                  "slurm section: " + ", ".join(SLURM_OPTIONS))

    def arm_table(self) -> dict[str, Arm]:
        """The named arms, or one arm per optimizer named after it."""
        if self.arms and self.optimizers:
            raise ConfigError("give --optimizers or --arms, not both")
        if self.arms:
            return dict(self.arms)
        return {name: Arm(optimizer=name) for name in _unique("--optimizers", self.optimizers)}


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



# ------------------------------------------------------------------------------------ plan
def plan_sweep(options: SweepOptions) -> list[SweepRun]:
    """Validate the grid and state each run's folder, config and status; trains nothing."""
    _check_executor(options)
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
    check_sinks(options.log if options.log is not None else base.tracking.sinks)
    device = "cuda" if options.gpus > 1 else None
    sinks = tuple(options.log) if options.log is not None else None
    # The dataset's identity, read once and only where a run folder exists to check it against.
    identity = functools.cache(lambda: dataset_identity(base.data.path))
    runs = []
    for fold in folds or [base.data.fold]:
        for seed in seeds:
            shared: Path | None = None
            if options.share_pretraining:
                shared = _cell_dir(options.out, PRETRAIN_ARM, fold, seed)
                config = _resolve(options, base.optimizer.model_dump(mode="json"),
                                  Overrides(seed=seed, fold=fold, run_dir=shared, device=device,
                                            sinks=sinks), phases=["pretrain"])
                runs.append(_run(options.out, PRETRAIN_ARM, seed, fold, config, None, identity))
            for name, arm in arms.items():
                run_dir = _cell_dir(options.out, name, fold, seed)
                config = _resolve(options, _optimizer_section(base, arm), Overrides(
                    seed=seed + arm.seed_offset, fold=fold, run_dir=run_dir, device=device,
                    init_from=shared, sinks=sinks), framework=arm.framework)
                runs.append(_run(options.out, name, seed, fold, config, shared, identity))
    return runs


def _cell_dir(out: Path, arm: str, fold: str | None, seed: int) -> Path:
    return Path(out) / arm / f"{fold or 'all'}-s{seed}"


def _run(out: Path, arm: str, seed: int, fold: str | None, config: TrainConfig,
         init_from: Path | None, identity: Callable[[], DatasetIdentity]) -> SweepRun:
    assert config.run_dir is not None
    run_dir = config.run_dir
    status = run_status(run_dir)
    if status != "new":
        _check_trained_as_planned(run_dir, config, out)
        _check_same_dataset(run_dir, config, out, identity)
    return SweepRun(run_dir=run_dir, arm=arm, optimizer=config.optimizer.name, seed=seed,
                    fold=fold, status=status, init_from=init_from, config=config,
                    config_file=Path(out) / CONFIG_DIR / arm / f"{run_dir.name}.yaml")


# Keys that say where and how a run is watched, not what it learns: a sweep run again with
# other values of these still reuses its finished runs.
_UNDEFINING = ("run_dir", "device", "tracking", "slurm", "log_every", "checkpoint_every",
               "diagnostics_every")


def _check_trained_as_planned(run_dir: Path, config: TrainConfig, out: Path) -> None:
    """Refuse to reuse (skip as done, or resume) a run that its folder's ``config.yaml`` says
    was trained otherwise than this sweep would train it: its results would be reported under
    the sweep's new config."""
    stored_file = RunFolder(run_dir).config
    if not stored_file.is_file():
        return
    stored = validate_config(read_config_data(run_dir), source=str(stored_file),
                             try_optimizer=False)
    # data.path and init_from absolute on both sides: hco train stores them so, the sweep's
    # config may give them relative to this folder, and runs from before hold them as given.
    changes = {k: v for k, v in config_changes(with_absolute_paths(stored),
                                                with_absolute_paths(config)).items()
               if not under(k, _UNDEFINING)}
    if changes:
        raise ConfigError(f"{run_dir} was trained with another config than this sweep gives it "
                          f"({describe_changes(changes)}); sweep into another --out, or remove "
                          f"the run to train it again (sweep folder {out})")


def _check_same_dataset(run_dir: Path, config: TrainConfig, out: Path,
                        current: Callable[[], DatasetIdentity]) -> None:
    """Refuse to reuse a run whose ``run.json`` says it trained on another preparation of the
    sweep's dataset (prepared again since, with other splits, cases or preprocessing)."""
    if not RunFolder(run_dir).run_json.is_file():
        return
    recorded = read_run_info(run_dir).dataset_identity
    changed = changed_parts(recorded, current()) if recorded else []
    if changed:
        raise ConfigError(f"{run_dir} was trained on another preparation of "
                          f"{config.data.path} (its {' and '.join(changed)} differ): its "
                          "results would be reported as this dataset's; sweep into another "
                          f"--out, or remove the run to train it again (sweep folder {out})")


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


def _resolve(options: SweepOptions, optimizer: dict[str, Any], overrides: Overrides, *,
             framework: dict[str, Any] | None = None,
             phases: list[str] | None = None) -> TrainConfig:
    """The config file with the sweep's overrides, the arm's optimizer and framework keys and
    the sweep's Slurm resources (a job of several GPUs trains its run data-parallel)."""
    config = build_config(config_file=options.config, overrides=overrides)
    raw = config.model_dump(mode="json")
    raw["optimizer"] = optimizer
    raw["framework"] = {**raw["framework"], **(framework or {})}
    raw["slurm"] = {**raw["slurm"], **options.slurm}
    if options.executor != "local" and raw["slurm"]["gpus_per_run"] > 1:
        raw["distributed"]["processes"] = raw["slurm"]["gpus_per_run"]
    if phases is not None:
        raw["phases"] = phases
    return validate_config(raw, source=str(options.config))


def _check_executor(options: SweepOptions) -> None:
    """Options of one executor are refused with another."""
    unknown = sorted(set(options.slurm) - set(SLURM_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown Slurm option(s) {', '.join(unknown)}; the sweep sets: "
                          + ", ".join(SLURM_OPTIONS))
    if options.executor == "local" and options.slurm:
        name = next(iter(options.slurm)).replace("_", "-")
        raise ConfigError(f"--{name} applies to --executor slurm (or submitit-local)")
    if options.executor != "local" and (options.gpus > 1 or options.runs_per_gpu not in (1, AUTO)):
        raise ConfigError("--gpus and --runs-per-gpu apply to --executor local; a Slurm job's "
                          "GPUs are --gpus-per-run")


def resolve_runs_per_gpu(options: SweepOptions, runs: Sequence[SweepRun]) -> tuple[int, str]:
    """How many of ``runs`` share each GPU at a time, and why.

    ``auto`` shares each GPU between two runs (:data:`AUTO_RUNS_PER_GPU`) when CUDA trains them
    and two of the largest run fit the smallest GPU's memory by the planner's memory model
    (:func:`run_memory_bytes`); else one. Where it pays, measured (BCP on LA, eager, H200;
    README, Speed): two runs on one GPU gave 1.42x the aggregate throughput of one, three 1.38x
    and four 1.44x, so runs past the second add memory and per-run wall time, not throughput.
    Under CUDA graphs (``compile: reduce-overhead`` in any run) one run keeps the GPU busy: two
    full-protocol runs sharing an H200 self-trained at 60-61 ms per iteration each, against
    29.7 ms for the one left alone (0.98x; validation 0.86x), so ``auto`` is one run there.
    """
    if options.runs_per_gpu != AUTO:
        return int(options.runs_per_gpu), "--runs-per-gpu"
    if options.executor != "local" or not runs:
        return 1, "auto: one run per job" if runs else "auto: nothing to run"
    if not torch.cuda.is_available() or any(r.config.device == "cpu" for r in runs):
        return 1, "auto: training on the CPU"
    if any(r.config.compile == "reduce-overhead" for r in runs):
        return 1, "auto: CUDA graphs (compile: reduce-overhead) keep one run's GPU busy"
    resident: dict[Path, int] = {}  # per dataset, shared by the runs
    need = max(run_memory_bytes(r.config, resident) for r in runs)
    have = min(torch.cuda.get_device_properties(i).total_memory for i in range(options.gpus))
    fits = AUTO_RUNS_PER_GPU * need <= have
    return (AUTO_RUNS_PER_GPU if fits else 1), (
        f"auto: {AUTO_RUNS_PER_GPU} runs of up to {need / GIB:.1f} GiB "
        f"{'fit' if fits else 'do not fit'} {have / GIB:.0f} GiB per GPU")


def run_memory_bytes(config: TrainConfig, resident: dict[Path, int] | None = None) -> int:
    """An upper bound of one run's GPU memory: :func:`iteration_bytes`, the dataset's cases
    where the data live on the GPU (:func:`resident_bytes`, kept in ``resident`` per dataset
    when given), and :data:`PROCESS_BYTES` for the process's CUDA context and allocator slack."""
    cases = 0
    if config.data.device != "cpu":
        known = {} if resident is None else resident
        if config.data.path not in known:
            known[config.data.path] = resident_bytes(config.data.path)
        cases = known[config.data.path]
    return iteration_bytes(config) + cases + PROCESS_BYTES


def iteration_bytes(config: TrainConfig) -> int:
    """The planner's estimate of one iteration (:func:`hco_cli.planning.memory.estimate_memory`)
    for the config's network, framework, batches, optimizer family and precision."""
    dataset = PreparedDataset(config.data.path)
    net = NetworkShape(patch=config.data.patch_size,
                       strides=config.model.strides or DEFAULT_STRIDES,
                       n_filters=config.model.n_filters, in_channels=dataset.plan().channels,
                       num_classes=dataset.num_classes, dropout=config.model.dropout)
    framework = config.framework.name
    if framework not in FRAMEWORKS:
        raise ConfigError(f"no memory model for framework {framework!r}")
    return estimate_memory(net, framework=framework, labeled=config.data.labeled_batch_size,
                           unlabeled=config.data.unlabeled_batch_size,
                           kernels=config.model.kernels,
                           optimizer=config.optimizer.name.split("-")[0], amp=config.amp).total


def resident_bytes(data: Path) -> int:
    """Every stored case of dataset ``data`` on the GPU, float32 images and 4-byte labels: a
    bound on what a run keeps there (its training cases, and the validation and test cases it
    scores). Read from the arrays' headers (memory maps), once per dataset of a sweep."""
    dataset = PreparedDataset(data)
    stored = 0
    for case in dataset.case_ids():
        voxels = dataset.image(case).size  # a memory map: the header only
        stored += voxels * 4 + (voxels * 4 if dataset.has_label(case) else 0)
    return stored


def _check_gpus(gpus: int) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > available:
        raise ConfigError(f"--gpus {gpus}: only {available} CUDA device(s) are available")


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
    if not base.framework.shares_pretraining:
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
    folder = RunFolder(run_dir)
    if read_json(folder.run_json).get("finished") is True:
        return "done"
    return "resume" if folder.checkpoint("last").is_file() else "new"


def compare_command(runs: Sequence[SweepRun], out: Path) -> str:
    """The ``hco compare`` line that reads the sweep, one group per arm; with one arm, a
    placeholder for the reference's runs first (a comparison needs two arms)."""
    names = dict.fromkeys(r.arm for r in runs if r.arm != PRETRAIN_ARM)
    groups = [f"'{n}={Path(out) / n}/*'" for n in names]
    if len(groups) == 1:
        groups.insert(0, "'REFERENCE=<its run folders>'")
    return "hco compare " + " ".join(groups)


def needs_evaluation(run: SweepRun, options: SweepOptions) -> bool:
    return (options.evaluate and run.arm != PRETRAIN_ARM
            and not summary_path(run.run_dir).is_file())


__all__ = ["SLURM_OPTIONS", "Arm", "Executor", "PlanStatus", "SweepOptions", "SweepRun",
           "compare_command", "load_arms", "needs_evaluation", "plan_sweep", "run_status",
           "write_plan"]
