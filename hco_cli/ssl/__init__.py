"""Semi-supervised frameworks (supervised, mean teacher, BCP, CMT) behind one small interface."""

from hco_cli.ssl.base import Framework, Phase, StepResult, two_source_step
from hco_cli.ssl.config import (
    BCPConfig,
    CMTConfig,
    FrameworkConfig,
    MeanTeacherConfig,
    SupervisedConfig,
)
from hco_cli.ssl.registry import FRAMEWORK_NAMES, build_framework

__all__ = [
    "FRAMEWORK_NAMES",
    "BCPConfig",
    "CMTConfig",
    "Framework",
    "FrameworkConfig",
    "MeanTeacherConfig",
    "Phase",
    "StepResult",
    "SupervisedConfig",
    "build_framework",
    "two_source_step",
]
