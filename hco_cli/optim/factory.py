"""The optimizer registry: public names -> class, fixed options, defaults and a description.

``build_optimizer("sgd-hco", model.parameters(), lr=0.01)`` builds any registered optimizer;
hyperparameters that do not belong to the named optimizer are refused, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hco_cli.errors import ConfigError
from hco_cli.optim.adam import Adam, AdamW
from hco_cli.optim.base import TwoSourceOptimizer
from hco_cli.optim.masks import HyperparameterError
from hco_cli.optim.sgd import SGD
from hco_cli.optimizer_defaults import FAMILY_AND_VARIANT, FAMILY_DEFAULTS

_FAMILY_CLASSES: dict[str, Callable[..., TwoSourceOptimizer]] = {
    "sgd": SGD, "adam": Adam, "adamw": AdamW,
}
_VARIANT_TEXT = {
    "plain": "as torch.optim.{cls} on g_L + g_U",
    "co": "cautious: update masked where it disagrees with the gradient g_L + g_U",
    "hco": "hierarchical cautious: momentum from g_L, g_U admitted where aligned with it",
}


@dataclass(frozen=True)
class OptimInfo:
    """One registered optimizer: class, fixed options (variant), defaults and what it is."""

    name: str
    family: str
    variant: str
    cls: Callable[..., TwoSourceOptimizer]
    defaults: dict[str, Any]
    description: str
    options: tuple[str, ...] = field(default=())

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """Every keyword :func:`build_optimizer` accepts for this name."""
        return (*self.defaults, *self.options, "foreach", "flat", "fused")


def _info(name: str, family: str, variant: str) -> OptimInfo:
    options: tuple[str, ...] = () if variant == "plain" else ("mask_eps", "mask_norm")
    if variant == "hco":
        options += ("refine_mask", "second_term", "persist_refinement")
    if name == "sgd-hco":
        options += ("double_decay",)
    if family == "sgd" and variant != "hco":
        options += ("decoupled_weight_decay",)
    options += ("unlabeled_scale",)
    torch_cls = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[family]
    return OptimInfo(name=name, family=family, variant=variant, cls=_FAMILY_CLASSES[family],
                     defaults=dict(FAMILY_DEFAULTS[family]),
                     description=_VARIANT_TEXT[variant].format(cls=torch_cls), options=options)


REGISTRY: dict[str, OptimInfo] = {
    info.name: info
    for info in (_info(n, f, v) for n, (f, v) in FAMILY_AND_VARIANT.items())
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(REGISTRY)


def optimizer_info(name: str) -> OptimInfo:
    """The registry entry of ``name``; ConfigError listing the valid names if unknown."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}") from None


def plain_variant(name: str) -> str:
    """The plain member of ``name``'s family: ``sgd-hco`` -> ``sgd``, ``adamw-co`` -> ``adamw``."""
    return optimizer_info(name).family


def optimizer_family(name: str) -> str:
    """``sgd``, ``adam`` or ``adamw``."""
    return optimizer_info(name).family


def build_optimizer(name: str, params: Iterable[Any], **hyperparameters: Any) -> TwoSourceOptimizer:
    """Build the registered optimizer ``name`` over ``params`` with defaults filled in."""
    info = optimizer_info(name)
    unknown = sorted(set(hyperparameters) - set(info.hyperparameters))
    if unknown:
        raise HyperparameterError(
            f"Hyperparameter(s) {', '.join(unknown)} do not apply to optimizer {name!r}; "
            f"valid: {', '.join(sorted(info.hyperparameters))}")
    if "betas" in hyperparameters and isinstance(hyperparameters["betas"], list):
        hyperparameters["betas"] = tuple(hyperparameters["betas"])  # e.g. from YAML/JSON
    return info.cls(params, variant=info.variant, **{**info.defaults, **hyperparameters})
