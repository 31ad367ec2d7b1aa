"""Optimizers with the two-gradient contract: sgd, adam, adamw and their -co and -hco variants."""

from hco_cli.optim.adam import Adam, AdamW
from hco_cli.optim.base import TwoSourceOptimizer
from hco_cli.optim.diagnostics import DIAGNOSTIC_KEYS
from hco_cli.optim.factory import (
    OPTIMIZER_NAMES,
    REGISTRY,
    OptimInfo,
    build_optimizer,
    optimizer_family,
    optimizer_info,
    plain_variant,
)
from hco_cli.optim.masks import HyperparameterError
from hco_cli.optim.sgd import SGD

__all__ = [
    "DIAGNOSTIC_KEYS",
    "OPTIMIZER_NAMES",
    "REGISTRY",
    "SGD",
    "Adam",
    "AdamW",
    "HyperparameterError",
    "OptimInfo",
    "TwoSourceOptimizer",
    "build_optimizer",
    "optimizer_family",
    "optimizer_info",
    "plain_variant",
]
