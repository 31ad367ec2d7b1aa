"""hco_cli.optimizer_defaults: the torch-free names and defaults the registry builds over,
name for name (that compare loads no torch: tests/test_architecture.py)."""

from __future__ import annotations

import pytest

from hco_cli.optim import OPTIMIZER_NAMES, optimizer_info
from hco_cli.optimizer_defaults import FAMILY_AND_VARIANT, default_lr


def test_every_registered_name_and_no_other_has_a_default_rate() -> None:
    assert OPTIMIZER_NAMES == ("sgd", "sgd-co", "sgd-hco", "adam", "adam-co", "adam-hco",
                               "adamw", "adamw-co", "adamw-hco")
    for name in OPTIMIZER_NAMES:
        info = optimizer_info(name)
        assert FAMILY_AND_VARIANT[name] == (info.family, info.variant)
        assert default_lr(name) == info.defaults["lr"]
    assert default_lr("sgd") == 0.01 and default_lr("adamw-hco") == 1e-3


@pytest.mark.parametrize("name", ["sgd-plain", "lion", "sgd-x", "adamw-", "-hco", ""])
def test_an_unknown_name_has_none(name: str) -> None:
    assert name not in FAMILY_AND_VARIANT and default_lr(name) is None

