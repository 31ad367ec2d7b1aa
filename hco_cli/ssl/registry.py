"""Build a framework from its configuration (the one entry point the training loop uses)."""

from __future__ import annotations

import torch

from hco_cli.ssl.base import Framework, ModelFactory
from hco_cli.ssl.bcp import BCPFramework
from hco_cli.ssl.cmt import CMTFramework
from hco_cli.ssl.common import default_seed
from hco_cli.ssl.config import (
    BCPConfig,
    CMTConfig,
    FrameworkConfig,
    MeanTeacherConfig,
    SupervisedConfig,
)
from hco_cli.ssl.mean_teacher import MeanTeacherFramework
from hco_cli.ssl.supervised import SupervisedFramework

FRAMEWORK_NAMES: tuple[str, ...] = ("supervised", "mean-teacher", "bcp", "cmt")


def build_framework(cfg: FrameworkConfig, *, model_factory: ModelFactory, num_classes: int,
                    device: torch.device, seed: int | None = None,
                    compile_losses: bool = False) -> Framework:
    """The framework named by ``cfg.name``, its networks built by ``model_factory`` on ``device``.

    ``seed`` seeds the framework's own random streams (copy-paste cubes, blur views, teacher
    noise); by default it is drawn from torch's global generator, which the loop seeds.
    ``compile_losses`` runs the framework's losses through ``torch.compile``
    (:meth:`Framework.compile_losses`).
    """
    framework = _build(cfg, model_factory=model_factory, num_classes=num_classes, device=device,
                       seed=default_seed() if seed is None else seed)
    if compile_losses:
        framework.compile_losses()
    return framework


def _build(cfg: FrameworkConfig, *, model_factory: ModelFactory, num_classes: int,
           device: torch.device, seed: int) -> Framework:
    if isinstance(cfg, SupervisedConfig):
        return SupervisedFramework(cfg, model_factory=model_factory, num_classes=num_classes,
                                   device=device)
    if isinstance(cfg, MeanTeacherConfig):
        return MeanTeacherFramework(cfg, model_factory=model_factory, num_classes=num_classes,
                                    device=device, seed=seed)
    if isinstance(cfg, BCPConfig):
        return BCPFramework(cfg, model_factory=model_factory, num_classes=num_classes,
                            device=device, seed=seed)
    if isinstance(cfg, CMTConfig):
        return CMTFramework(cfg, model_factory=model_factory, num_classes=num_classes,
                            device=device, seed=seed)
    raise TypeError(f"not a framework configuration: {type(cfg).__name__}")
