"""The training configuration: one validated, serialisable ``TrainConfig`` per run.

Every section forbids unknown keys. :func:`validate_config` turns pydantic's errors into one
ConfigError line that names the field and, where the field has a fixed set of values, lists
them.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hco_cli.data.dataset import FOLD_PATTERN
from hco_cli.errors import ConfigError
from hco_cli.models import ModelConfig
from hco_cli.optim import OPTIMIZER_NAMES, HyperparameterError, build_optimizer, optimizer_info
from hco_cli.ssl.config import FrameworkConfig

Device = Literal["auto", "cpu", "cuda"]
Split = Literal["val", "test"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Which prepared dataset, which cases, and how patches are drawn."""

    path: Path
    fold: str | None = Field(default=None, description="L<i>U<j> fold of the dataset's grid")
    labeled: int | None = Field(default=None, ge=1, description="first N labeled cases only")
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
        if min(value) < 1:
            raise ValueError("every patch dimension must be >= 1")
        return value

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
    def _accepted(self) -> OptimizerConfig:
        accepted = set(optimizer_info(self.name).hyperparameters)
        refused = sorted(set(self.hyperparameters()) - accepted)
        if refused:
            raise ValueError(f"{', '.join(refused)} do(es) not apply to optimizer {self.name}; "
                             f"it accepts: {', '.join(sorted(accepted))}")
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
    stride: tuple[int, int, int] = (18, 18, 4)
    batch_size: int = Field(default=4, ge=1, description="windows per forward pass")


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


class TrainConfig(_Section):
    """Everything a training run depends on; saved with the run and in every checkpoint."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    framework: FrameworkConfig
    optimizer: OptimizerConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    checkpoint_every: int = Field(default=1000, ge=1)
    log_every: int = Field(default=50, ge=1, description="iterations per metrics flush")
    diagnostics_every: int = Field(default=50, ge=0, description="iterations between optimizer "
                                   "diagnostics (step norm, cos(g_L, g_U), ...); 0: none")
    seed: int = 1337
    device: Device = "auto"
    deterministic: bool = Field(default=False, description="cudnn deterministic, no benchmark")
    amp: bool = Field(default=False, description="bf16 autocast on CUDA (fp32 elsewhere)")
    channels_last: bool = False
    run_dir: Path | None = None
    init_from: Path | None = Field(default=None, description="run whose pretrain.pt is reused")
    phases: list[str] | None = Field(default=None, description="train only these phases of "
                                     "the framework (e.g. [pretrain] for a shared pre-training "
                                     "run); None: all")
    plan: Literal["auto"] | None = Field(default=None, description="auto: patch, batch sizes "
                                         "and network layout from the dataset's plan (hco "
                                         "plan), filled in when the config is built")


def validate_config(data: Any, *, source: str = "config") -> TrainConfig:
    """Validate raw data (from YAML, a preset or a checkpoint) into a TrainConfig."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(exc)}") from None


def describe_error(exc: ValidationError) -> str:
    """One line for the first error: dotted field, message, and the allowed keys if unknown."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    where = ".".join(loc) or "config"
    message = first["msg"]
    if first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif first["type"] == "missing":
        message = "is required"
    return f"{where}: {message}"


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
