"""The training configuration: one validated, serialisable ``TrainConfig`` per run.

Every section forbids unknown keys. :func:`validate_config` turns pydantic's errors into one
ConfigError line that names the field and, where the field has a fixed set of values, lists
them.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hco_cli.data.dataset import FOLD_PATTERN
from hco_cli.errors import ConfigError
from hco_cli.models import ModelConfig
from hco_cli.optim import OPTIMIZER_NAMES, HyperparameterError, build_optimizer, optimizer_info
from hco_cli.ssl.config import FrameworkConfig

# Validation context key: False skips the optimizer trial build (validate_config).
TRY_OPTIMIZER = "try_optimizer"

Device = Literal["auto", "cpu", "cuda"]
Split = Literal["val", "test"]


def _all_positive(value: tuple[int, int, int], what: str) -> tuple[int, int, int]:
    """``value`` where every entry is at least 1; else a ValueError naming ``what``."""
    if min(value) < 1:
        raise ValueError(f"every {what} must be >= 1")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Which prepared dataset, which cases, and how patches are drawn."""

    path: Path
    fold: str | None = Field(default=None, description="L<i>U<j> fold of the dataset's grid")
    labeled: int | None = Field(default=None, ge=1, description="first N labeled cases only")
    # The labeled cases past the first N: into the unlabeled pool, their labels unread, as the
    # SSL literature's splits have it (BCP's LA at 4 labeled draws unlabeled from cases 4-79 of
    # train.list), or left out of training altogether ("drop", a smaller training set).
    labeled_rest: Literal["unlabeled", "drop"] = "unlabeled"
    patch_size: tuple[int, int, int]
    labeled_batch_size: int = Field(default=4, ge=1)
    unlabeled_batch_size: int = Field(default=4, ge=0)
    augment: Literal["bcp", "flip", "none"] = "bcp"
    # BCP-Pancreas center-crops unlabeled volumes (PROTOCOLS 1.7); LA crops them at random.
    unlabeled_crop: Literal["random", "center"] = "random"
    # UCMT draws its unlabeled stream from every training case, the labeled ones included.
    unlabeled_includes_labeled: bool = False
    device: Device = Field(default="auto", description="where volumes live; auto = train device")

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        return _all_positive(value, "patch dimension")

    @field_validator("fold")
    @classmethod
    def _fold(cls, value: str | None) -> str | None:
        if value is not None and not FOLD_PATTERN.match(value):
            raise ValueError("must look like L<i>U<j>, e.g. L0U1")
        return value


class OptimizerConfig(_Section):
    """A registered optimizer; unset hyperparameters take the registry's defaults."""

    name: str
    lr: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    momentum: float | None = Field(default=None, ge=0, lt=1)
    betas: tuple[float, float] | None = None
    eps: float | None = Field(default=None, gt=0)
    mask_eps: float | None = Field(default=None, gt=0)
    options: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="further keywords of the optimizer (e.g. mask_norm)")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {value!r}; choose one of: "
                             + ", ".join(OPTIMIZER_NAMES))
        return value

    @model_validator(mode="after")
    def _accepted(self, info: ValidationInfo) -> OptimizerConfig:
        accepted = set(optimizer_info(self.name).hyperparameters)
        refused = sorted(set(self.hyperparameters()) - accepted)
        if refused:
            raise ValueError(f"{', '.join(refused)} do(es) not apply to optimizer {self.name}; "
                             f"it accepts: {', '.join(sorted(accepted))}")
        if info.context and not info.context.get(TRY_OPTIMIZER, True):
            return self
        # Values and combinations (e.g. a contradictory reading) on a one-element stand-in,
        # so a bad optimizer fails before any run folder exists.
        trial = {**self.hyperparameters(), "flat": False, "fused": False}
        try:
            build_optimizer(self.name, [torch.zeros(1, requires_grad=True)], **trial)
        except HyperparameterError as exc:
            raise ValueError(str(exc)) from None
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """The keywords passed to ``build_optimizer`` (unset fields left to its defaults)."""
        fields = {k: getattr(self, k) for k in
                  ("lr", "weight_decay", "momentum", "betas", "eps", "mask_eps")}
        return {**{k: v for k, v in fields.items() if v is not None}, **self.options}

    @property
    def base_lr(self) -> float:
        return float(self.lr if self.lr is not None
                     else optimizer_info(self.name).defaults["lr"])


class ValidationConfig(_Section):
    """How often and on what the network is scored during training."""

    every: int = Field(default=200, ge=1, description="iterations between validations")
    split: Split = Field(default="val", description="split scored and logged as 'dice'")
    select_on: Split = Field(default="val", description="split that chooses best.pt")
    also_select_on: list[Split] = Field(
        default_factory=list,
        description="more splits scored at each validation of the final phase "
        "(self-training), each keeping its own best weights as checkpoints/best-<split>.pt; "
        "[test] is the reference code's test-set selection, to be reported as such, never as "
        "a held-out result (scoring the test split costs its sliding windows at every "
        "validation)")
    stride: tuple[int, int, int] = (18, 18, 4)
    batch_size: int = Field(default=4, ge=1, description="windows per forward pass (with "
                            "compile, the last batch is padded to it: one compiled shape)")
    stream_cases: bool = Field(default=True, description="run the split's windows as one "
                               "stream, a case's last batch filled with the next case's "
                               "windows (false: case by case, as before 2026-12-02; with "
                               "compile every case's last batch is then padded). The same "
                               "maps bit for bit with cuDNN autotuning; with deterministic "
                               "kernels a bf16 window may round differently in another batch")

    @field_validator("stride")
    @classmethod
    def _positive_stride(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        return _all_positive(value, "stride")

    @model_validator(mode="after")
    def _distinct_selections(self) -> ValidationConfig:
        if len(set(self.also_select_on)) < len(self.also_select_on):
            raise ValueError("also_select_on names a split twice")
        if self.select_on in self.also_select_on:
            raise ValueError(f"also_select_on repeats select_on ({self.select_on}), which "
                             "already keeps best.pt")
        return self


class DistributedConfig(_Section):
    """Data-parallel training: one process per GPU (gloo processes with device cpu).

    Every process draws its own batches of the configured size, so the global batch is
    ``processes`` times the configured one; the learning rate is not rescaled.
    """

    processes: int = Field(default=1, ge=1, description="training processes (--gpus)")
    sync_batchnorm: bool = Field(default=False, description="BatchNorm statistics over all "
                                 "processes (CUDA only)")
    # 6 MB: about 7 buckets per 38 MB gradient of the V-Net, so all-reduces start during the
    # backward pass (2 x H200: faster than 25 MB, see results/speed/ddp_throughput-*).
    bucket_mb: float = Field(default=6.0, gt=0, description="gradient all-reduce bucket size")


TRACKING_SINKS = ("tensorboard", "mlflow")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^\d+[KMGT]?$")


class TrackingConfig(_Section):
    """Where rank 0 also sends the records it writes to ``metrics.jsonl``."""

    sinks: list[str] = Field(default_factory=list, description="tensorboard (RUN/tensorboard), "
                             "mlflow ($MLFLOW_TRACKING_URI, else ./mlruns)")
    images: int = Field(default=2, ge=0, description="validation cases drawn per validation as "
                        "mid-slice image/label/prediction overlays (TensorBoard)")
    mlflow_uri: str | None = Field(default=None, description="MLflow tracking URI (default: "
                                   "$MLFLOW_TRACKING_URI, else file:<working dir>/mlruns)")
    experiment: str = Field(default="hco", min_length=1, description="MLflow experiment name")

    @field_validator("sinks")
    @classmethod
    def _known_sinks(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in TRACKING_SINKS]
        if unknown:
            raise ValueError(f"unknown sink {unknown[0]!r}; choose from: "
                             + ", ".join(TRACKING_SINKS))
        return list(dict.fromkeys(value))


class SlurmConfig(_Section):
    """The Slurm job of one run when ``hco sweep --executor slurm`` submits it (``hco train``
    ignores this section)."""

    partition: str | None = Field(default=None, description="default: the cluster's")
    gpus_per_run: int = Field(default=1, ge=0, description="GPUs per job; more than 1 trains "
                              "the run data-parallel on them; 0: a CPU job")
    cpus_per_run: int = Field(default=8, ge=1, description="CPU cores per job")
    time: str = Field(default="24:00:00", description="time limit: MINUTES, HH:MM:SS or "
                      "D-HH:MM:SS")
    mem: str | None = Field(default=None, description="memory per job, e.g. 64G")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job "
                             "(module load ..., source .venv/bin/activate)")
    options: dict[str, str | int] = Field(default_factory=dict, description="further sbatch "
                                          "options, e.g. account: lab, qos: high")

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not _TIME.match(value.strip()) or slurm_minutes(value) < 1:
            raise ValueError(f"{value!r} is not a Slurm time limit (MINUTES, HH:MM:SS or "
                             "D-HH:MM:SS, at least one minute)")
        return value.strip()

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not _MEM.match(value.strip().upper()):
            raise ValueError(f"{value!r} is not a memory size like 64G or 32000M")
        return None if value is None else value.strip().upper()

    @property
    def minutes(self) -> int:
        return slurm_minutes(self.time)


def slurm_minutes(text: str) -> int:
    """Minutes of a Slurm time limit (seconds round up): ``90``, ``4:00:00``, ``1-12:00:00``."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(f"not a Slurm time limit: {text!r}")
    days, first, second, third = match.groups()
    if days is None and second is None:  # MINUTES
        return int(first)
    if third is None and days is None:  # MINUTES:SECONDS, as sbatch reads two fields
        return int(first) + (int(second) > 0)
    hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]


def stride_gap(patch: tuple[int, int, int], stride: tuple[int, int, int]) -> str | None:
    """Where a sliding window's ``stride`` is longer than its ``patch`` on an axis (voxels
    between two windows would get no prediction), a one-line reason; else None."""
    for axis, (p, s) in enumerate(zip(patch, stride, strict=True)):
        if s > p:
            return (f"stride {','.join(map(str, stride))} is longer than the patch "
                    f"{','.join(map(str, patch))} on axis {'xyz'[axis]}: the voxels between "
                    "two windows would get no prediction")
    return None


class TrainConfig(_Section):
    """Everything a training run depends on; saved with the run and in every checkpoint."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    framework: FrameworkConfig
    optimizer: OptimizerConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    checkpoint_every: int = Field(default=1000, ge=1)
    log_every: int = Field(default=50, ge=1, description="iterations per metrics flush")
    diagnostics_every: int = Field(default=50, ge=0, description="iterations between optimizer "
                                   "diagnostics (step norm, cos(g_L, g_U), ...); 0: none")
    seed: int = 1337
    device: Device = "auto"
    deterministic: bool = Field(default=False, description="cudnn deterministic, no "
                                "benchmark, and torch's deterministic algorithms (warn only)")
    amp: bool = Field(default=False, description="bf16 autocast on CUDA (fp32 elsewhere)")
    channels_last: bool = False
    compile: bool | CompileMode = Field(
        default=False, description="torch.compile the network's forward (true: torch's "
        "default mode; reduce-overhead adds CUDA graphs); off by default")
    compile_losses: bool = Field(
        default=False, description="torch.compile the framework's losses (softmax, Dice, "
        "cross-entropy and their backward fused into a few kernels; torch's default mode, "
        "with or without compile); off by default")
    run_dir: Path | None = None
    init_from: Path | None = Field(default=None, description="run whose pretrain.pt is reused")
    phases: list[str] | None = Field(default=None, description="train only these phases of "
                                     "the framework (e.g. [pretrain] for a shared pre-training "
                                     "run); None: all")
    plan: Literal["auto"] | None = Field(default=None, description="auto: patch, batch sizes "
                                         "and network layout from the dataset's plan (hco "
                                         "plan), filled in when the config is built")

    @model_validator(mode="after")
    def _windows_cover(self) -> TrainConfig:
        if gap := stride_gap(self.data.patch_size, self.validation.stride):
            raise ValueError(f"validation.{gap}")
        return self


def validate_config(data: Any, *, source: str = "config",
                    try_optimizer: bool = True) -> TrainConfig:
    """Validate raw data (from YAML, a preset or a checkpoint) into a TrainConfig.

    ``try_optimizer=False`` skips building the optimizer on a stand-in parameter to check its
    values: for a run's stored config loaded to predict, which builds no optimizer. (Any torch
    optimizer imports torch._dynamo on construction, about 1-2 s of a cold ``hco predict``.)
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data, context={TRY_OPTIMIZER: try_optimizer})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(exc)}") from None


def with_absolute_paths(config: TrainConfig) -> dict[str, Any]:
    """``config`` as JSON data with ``data.path`` and ``init_from`` absolute (symbolic links
    kept as named): how hco train stores a run's dataset and the run it starts from, and how a
    sweep compares a stored run with its plan."""
    data = config.model_dump(mode="json")
    data["data"]["path"] = str(config.data.path.absolute())
    if config.init_from is not None:
        data["init_from"] = str(config.init_from.absolute())
    return data


def describe_error(exc: ValidationError) -> str:
    """One line for the first error: dotted field, message, and the allowed keys if unknown.

    An unknown key goes first: a misspelt required key (``patch_sise``) is also reported as
    the real one missing, and the misspelling is what the user has to see."""
    errors = exc.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in first["loc"]]
    where = ".".join(loc)  # empty for TrainConfig's own checks, which name their fields
    message = first["msg"]
    if first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif first["type"] == "missing":
        message = "is required"
    return f"{where}: {message}" if where else message


def _allowed_keys(parent: list[str]) -> list[str]:
    """Field names of the model found at ``parent``, following discriminator tags."""
    candidates: list[Any] = [TrainConfig]
    for part in parent:
        if len(candidates) > 1:
            candidates = [m for m in candidates if _tag(m) == part]
            continue
        field = candidates[0].model_fields.get(part) if candidates else None
        if field is None:
            return []
        candidates = [m for m in _members(field.annotation)
                      if isinstance(m, type) and issubclass(m, BaseModel)]
    return list(candidates[0].model_fields) if len(candidates) == 1 else []


def _members(annotation: Any) -> list[Any]:
    """Members of a (possibly Annotated) union, or the annotation itself."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    return [m for a in args for m in _members(a)] if args else [annotation]


def _tag(model: Any) -> str | None:
    field = getattr(model, "model_fields", {}).get("name")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return str(args[0]) if len(args) == 1 else None
