"""The optimizer families' default hyperparameters, free of torch.

The registry (:mod:`hco_cli.optim`) builds every optimizer with these; ``hco compare`` reads
from them the learning rate a run trained at where its config left ``lr`` unset, without the
two seconds that importing torch (through the registry) would add to every comparison.
"""

from __future__ import annotations

from typing import Any

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # BCP-LA: SGD(lr=0.01, momentum=0.9, weight_decay=1e-4), coupled L2, no Nesterov.
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    # BCP-Pancreas: Adam(lr=1e-3), no weight decay.
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
}
VARIANTS = ("plain", "co", "hco")
# Every registered name -> (family, variant): ``sgd`` is SGD's plain member, ``sgd-hco`` its
# HCO variant; the registry is built over this table.
FAMILY_AND_VARIANT: dict[str, tuple[str, str]] = {
    family if variant == "plain" else f"{family}-{variant}": (family, variant)
    for family in FAMILY_DEFAULTS for variant in VARIANTS
}


def default_lr(name: str) -> float | None:
    """The learning rate optimizer ``name`` trains at when none is given; None where the name
    is not a registered one."""
    found = FAMILY_AND_VARIANT.get(name)
    return None if found is None else float(FAMILY_DEFAULTS[found[0]]["lr"])
