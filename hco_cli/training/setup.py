"""Everything a run is built from before its first step: device, data, framework, validators.

Kept apart from the loop so that the loop reads as the training procedure only. Messages the
user must see before training (test-set selection, nothing to validate on) are collected in
``warnings``; the loop reports them through its progress callback.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.batch import Batch
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.identity import DatasetIdentity, changed_parts, dataset_identity
from hco_cli.data.sampling import PatchSampler
from hco_cli.errors import ConfigError
from hco_cli.models.vnet import build_model, compile_forward
from hco_cli.runs import checkpoint as ckpt
from hco_cli.ssl.base import Framework, Phase
from hco_cli.ssl.common import default_seed
from hco_cli.ssl.registry import build_framework
from hco_cli.training.checks import check_against_dataset
from hco_cli.training.distributed import SINGLE_PROCESS, DistributedContext
from hco_cli.training.validation import Validator

# Patch voxels x batch x iterations above which a CPU run gets a warning: about 75 times the
# synthetic demo, which takes two minutes on a 2-core CPU.
CPU_VOXEL_BUDGET = 10**9
TEST_SELECTION_WARNING = (
    "best.pt is selected on the TEST split: this inflates the reported results (the BCP and "
    "UCMT reference code does it); select on val or report the last checkpoint for an honest "
    "number"
)


def set_deterministic(on: bool) -> None:
    """``deterministic`` of the training config: cuDNN's deterministic kernels without
    autotuning, and torch's deterministic algorithms (inductor then avoids atomics in compiled
    code), warning rather than failing on an op without one; off: autotuning, as by default.
    cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before the process starts to be deterministic as
    well. Process-wide, as torch's settings are."""
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
    torch.use_deterministic_algorithms(on, warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for weight initialisation and dropout."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available; use cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass
class Validation:
    """The validators of the logged split and of the selection split (shared when equal).

    ``splits`` names the scored splits on every process; the validators themselves exist on
    rank 0 only, which validates for all.
    """

    scored: dict[str, Validator] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)


@dataclass
class RunSetup:
    config: TrainConfig  # resolved: run_dir filled in
    run_dir: Path
    device: torch.device
    dataset: PreparedDataset
    splits: dict[str, list[str]]
    sampler: PatchSampler
    validation: Validation
    framework: Framework
    phases: list[Phase]
    skipped: set[str]
    in_channels: int
    num_classes: int
    warnings: list[str]
    # Optimizer state of --init-from's pre-training, for a phase with carry_optimizer.
    init_optimizers: dict[str, Any] | None = None
    ctx: DistributedContext = SINGLE_PROCESS
    # config.yaml edits accepted on resume (--accept-config-changes), kept in run.json.
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    # The prepared dataset's digests, kept in last.pt and run.json (hco_cli.data.identity).
    dataset_identity: DatasetIdentity = field(default_factory=dict)

    @property
    def amp(self) -> bool:
        """bf16 autocast is used on CUDA only (CPU bf16 convolutions are slow and fragile)."""
        return self.config.amp and self.device.type == "cuda"

    @property
    def plan(self) -> dict[str, int]:
        """Iterations per phase trained in this run (0 for a phase taken from --init-from)."""
        return {p.name: 0 if p.name in self.skipped else p.iterations for p in self.phases}

    def to_device(self, batch: Batch) -> Batch:
        fmt = torch.channels_last_3d if self.config.channels_last else torch.contiguous_format

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, non_blocking=True)

        batch.labeled_image = move(batch.labeled_image).contiguous(memory_format=fmt)
        batch.labeled_label = move(batch.labeled_label)
        if batch.unlabeled_image is not None:
            batch.unlabeled_image = move(batch.unlabeled_image).contiguous(memory_format=fmt)
        return batch

    def run_info(self) -> dict[str, Any]:
        """The keys of run.json that do not change while training."""
        cfg = self.config
        return {"dataset": self.dataset.info.name, "framework": cfg.framework.name,
                "optimizer": cfg.optimizer.name, "seed": cfg.seed, "fold": cfg.data.fold,
                "labeled": len(self.splits["labeled"]),
                "unlabeled": len(self.splits["unlabeled"]), "iterations": self.plan,
                "device": device_name(self.device), "processes": self.ctx.world_size,
                "select_on": cfg.validation.select_on,
                "init_from": str(cfg.init_from) if cfg.init_from else None,
                "warnings": list(self.warnings),
                **({"config_changes": self.config_changes} if self.config_changes else {}),
                **({"dataset_identity": self.dataset_identity} if self.dataset_identity else {})}

    def summary(self) -> dict[str, Any]:
        return {**self.run_info(), "run_dir": str(self.run_dir),
                "validation_cases": {k: len(v) for k, v in self.validation.scored.items()},
                "optimizer_hyperparameters": self.config.optimizer.hyperparameters()}


def default_run_dir(config: TrainConfig, dataset_name: str) -> Path:
    """``runs/<dataset>-<framework>-<optimizer>-<fold or N labeled>-seed<seed>``."""
    part = config.data.fold or (f"{config.data.labeled}lab" if config.data.labeled else "all")
    fw, opt = config.framework.name, config.optimizer.name
    return Path("runs") / f"{dataset_name}-{fw}-{opt}-{part}-seed{config.seed}"


def resolve_splits(dataset: PreparedDataset, config: TrainConfig) -> dict[str, list[str]]:
    splits = dataset.splits.resolve(config.data.fold)
    n = config.data.labeled
    if n is not None:
        if n > len(splits["labeled"]):
            raise ConfigError(f"data.labeled = {n} but {dataset.root} has only "
                              f"{len(splits['labeled'])} labeled case(s) in this split")
        splits["labeled"], rest = splits["labeled"][:n], splits["labeled"][n:]
        if config.data.labeled_rest == "unlabeled":  # in train.list order, as they came
            splits["unlabeled"] = rest + splits["unlabeled"]
    return splits


def training_cases(splits: dict[str, list[str]], config: TrainConfig) -> list[str]:
    """The cases patches are drawn from (labeled, and unlabeled when batches take them)."""
    return splits["labeled"] + (splits["unlabeled"] if config.data.unlabeled_batch_size else [])


def check_config(config: TrainConfig) -> None:
    """:func:`check_against_dataset` for a config alone (before spawning workers)."""
    dataset = PreparedDataset(config.data.path)
    check_against_dataset(config, dataset, training_cases(resolve_splits(dataset, config),
                                                          config))


def resolve_run_dir(config: TrainConfig) -> TrainConfig:
    """``config`` with ``run_dir`` filled in (default: :func:`default_run_dir`)."""
    if config.run_dir is not None:
        return config
    data = config.model_dump(mode="json")
    data["run_dir"] = str(default_run_dir(config, PreparedDataset(config.data.path).info.name))
    return validate_config(data)


def build_setup(config: TrainConfig, *, resuming: bool = False,
                ctx: DistributedContext = SINGLE_PROCESS,
                identity: DatasetIdentity | None = None) -> RunSetup:
    """Seed, then build data, framework and validators for ``config`` on this process.

    Under data parallelism every rank builds identical networks (the run seed), then seeds its
    sampler, framework and dropout streams from :meth:`DistributedContext.stream_seed`; rank 0
    alone loads validation data. ``identity``: the dataset's, where the caller has read it
    (a resume, which checked it against the run's).
    """
    device = ctx.device(resolve_device(config.device))
    data_device = device if config.data.device == "auto" else ctx.device(
        resolve_device(config.data.device))
    set_deterministic(config.deterministic)
    dataset = PreparedDataset(config.data.path)
    config = resolve_run_dir(config)
    assert config.run_dir is not None
    splits = resolve_splits(dataset, config)
    d = config.data
    check_against_dataset(config, dataset, training_cases(splits, config), resuming=resuming)
    seed_everything(config.seed)
    unlabeled = splits["unlabeled"] + (splits["labeled"] if d.unlabeled_includes_labeled else [])
    sampler = PatchSampler(
        dataset, labeled=splits["labeled"], unlabeled=unlabeled,
        patch_size=d.patch_size, labeled_batch_size=d.labeled_batch_size,
        unlabeled_batch_size=d.unlabeled_batch_size, augment=d.augment,
        seed=ctx.stream_seed(config.seed), unlabeled_crop=d.unlabeled_crop, device=data_device)
    in_channels, num_classes = dataset.info.channels, dataset.num_classes
    framework = build_framework(config.framework, model_factory=_factory(config, in_channels,
                                num_classes, device), num_classes=num_classes, device=device,
                                seed=ctx.stream_seed(default_seed()),
                                compile_losses=config.compile_losses)
    if config.distributed.sync_batchnorm:
        _sync_batchnorm(framework, device)
    phases = framework.phases()
    identity = dataset_identity(dataset) if identity is None else identity
    skipped, init_optimizers, init_warnings = _init_from(config, framework, phases, num_classes,
                                                         identity, load=not resuming)
    skipped |= _unselected(config, phases)
    if ctx.stream_seed(config.seed) != config.seed:  # this rank's own dropout streams
        seed_everything(ctx.stream_seed(config.seed))
    validation, warnings = _validation(config, dataset, splits, device, num_classes, phases,
                                       build=ctx.is_main)
    if config.amp and device.type != "cuda":
        warnings.append(f"amp (bf16 autocast) applies on CUDA only: this run computes in fp32 "
                        f"on {device.type}")
    warnings += _cpu_warning(config, device, [p for p in phases if p.name not in skipped])
    return RunSetup(config=config, run_dir=config.run_dir, device=device, dataset=dataset,
                    splits=splits, sampler=sampler, validation=validation, framework=framework,
                    phases=phases, skipped=skipped, in_channels=in_channels,
                    num_classes=num_classes, warnings=init_warnings + warnings,
                    init_optimizers=init_optimizers, ctx=ctx, dataset_identity=identity)


def _cpu_warning(config: TrainConfig, device: torch.device, phases: list[Phase]) -> list[str]:
    """Say so up front when a schedule is far beyond what a CPU trains in minutes."""
    d = config.data
    iterations = sum(p.iterations for p in phases)
    voxels = iterations * math.prod(d.patch_size) * (d.labeled_batch_size + d.unlabeled_batch_size)
    if device.type != "cpu" or voxels <= CPU_VOXEL_BUDGET:
        return []
    patch = "x".join(map(str, d.patch_size))
    return [f"training on the CPU: {iterations} iterations of {patch} patches may take many "
            "hours here (a CUDA GPU takes minutes); for a first try on a CPU use --iterations "
            "200, or sample_configs/synthetic_demo.yaml"]


def _sync_batchnorm(framework: Framework, device: torch.device) -> None:
    """Turn the trainable networks' BatchNorm layers into SyncBatchNorm (in place)."""
    if device.type != "cuda":
        raise ConfigError("distributed.sync_batchnorm needs CUDA devices; this run trains on "
                          f"{device.type}")
    for name, module in framework.trainable().items():
        if nn.SyncBatchNorm.convert_sync_batchnorm(module) is not module:
            raise ConfigError(f"cannot convert the {name} network to SyncBatchNorm in place")


def _factory(config: TrainConfig, in_channels: int, num_classes: int,
             device: torch.device) -> Any:
    def make() -> nn.Module:
        model = build_model(config.model, in_channels=in_channels, num_classes=num_classes)
        model = model.to(device)
        if config.channels_last:  # 5-D weights only; Module.to converts nothing else
            model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        if config.compile:
            compile_forward(model, "default" if config.compile is True else config.compile)
        return model

    return make


def _unselected(config: TrainConfig, phases: list[Phase]) -> set[str]:
    """The phases that ``config.phases`` leaves out (none when it is not set)."""
    if config.phases is None:
        return set()
    names = [p.name for p in phases]
    unknown = [n for n in config.phases if n not in names]
    if unknown or not config.phases:
        raise ConfigError(f"phases: {config.phases} is not a non-empty selection of the "
                          f"{config.framework.name} phases {names}")
    return {n for n in names if n not in config.phases}


def _init_from(config: TrainConfig, framework: Framework, phases: list[Phase],
               num_classes: int, identity: DatasetIdentity, *,
               load: bool) -> tuple[set[str], dict[str, Any] | None, list[str]]:
    """Load another run's pretrain.pt into the eval model; the pretrain phase is skipped.

    Returns the skipped phases, for phases that carry the optimizer over its saved state, and
    a warning where the pre-training saw other splits or cases of this dataset (one prepared
    with other labels or preprocessing is refused: its network saw other inputs or classes).
    """
    if config.init_from is None:
        return set(), None, []
    shared = {p.name for p in phases if p.produces_shareable_checkpoint}
    if not shared:
        raise ConfigError(f"--init-from needs a framework with a pretrain phase; "
                          f"{config.framework.name} has {[p.name for p in phases]}")
    if load:
        path = ckpt.resolve_checkpoint(config.init_from, "pretrain")
        data = ckpt.load_checkpoint(path)
        theirs = data["config"]
        if theirs.get("model") != config.model.model_dump(mode="json") or int(
                data["num_classes"]) != num_classes:
            raise ConfigError(f"--init-from {config.init_from}: its model or classes differ "
                              "from this run's")
        warnings = _init_from_dataset(config, data.get("dataset_identity"), identity)
        framework.eval_model().load_state_dict(data["model"])
        if any(p.carry_optimizer for p in phases):
            if "optimizers" not in data:
                raise ConfigError(f"--init-from {config.init_from}: its pretrain.pt holds no "
                                  "optimizer state, which this run's self-training restores")
            return shared, data["optimizers"], warnings
        return shared, None, warnings
    return shared, None, []


def _init_from_dataset(config: TrainConfig, theirs: DatasetIdentity | None,
                       ours: DatasetIdentity) -> list[str]:
    """Refuse a pre-training on a dataset prepared with other labels or preprocessing; warn
    where only its splits or cases differ (a pretrain.pt from before identities: nothing)."""
    if not theirs:
        return []
    changed = changed_parts(theirs, ours)
    if {"labels", "preprocessing"} & set(changed):
        raise ConfigError(f"--init-from {config.init_from}: it pre-trained on {config.data.path} "
                          f"prepared with other {' and '.join(changed)}; pre-train on this "
                          "preparation of the dataset")
    if changed:
        return [f"--init-from {config.init_from} pre-trained on {config.data.path} with other "
                f"{' and '.join(changed)} (the dataset was prepared again since): its weights "
                "saw other cases than this run's"]
    return []


def _validation(config: TrainConfig, dataset: PreparedDataset, splits: dict[str, list[str]],
                device: torch.device, num_classes: int, phases: list[Phase], *,
                build: bool = True) -> tuple[Validation, list[str]]:
    v = config.validation
    warnings = []
    if v.select_on == "test":
        warnings.append(TEST_SELECTION_WARNING)
    validation = Validation()
    if "test" in v.also_select_on:
        warnings.append("also_select_on: [test] keeps checkpoints/best-test.pt, chosen on the "
                        "test set as the reference code does; report it as test-selected")
    for split in dict.fromkeys([v.split, v.select_on, *v.also_select_on]):
        if not splits[split]:
            what = ("best.pt will not be written; use last.pt" if split == v.select_on
                    else f"best-{split}.pt will not be written" if split in v.also_select_on
                    else "no validation Dice is logged for it")
            warnings.append(f"{dataset.root} has no '{split}' cases: {what}")
            continue
        validation.splits.append(split)
        if not build:
            continue
        validation.scored[split] = Validator(
            dataset, splits[split], patch_size=config.data.patch_size, stride=v.stride,
            num_classes=num_classes, device=device, batch_size=v.batch_size,
            amp=config.amp and device.type == "cuda", full_batches=bool(config.compile),
            stream=v.stream_cases)
    if v.select_on not in validation.splits:
        for p in phases:
            if p.restore_best:
                warnings.append(f"phase {p.name} restores its best validated weights, but "
                                "nothing is selected: it keeps its last weights")
    return validation, warnings
