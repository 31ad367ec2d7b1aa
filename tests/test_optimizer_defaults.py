"""hco_cli.optimizer_defaults: the torch-free defaults agree with the registry that builds
with them, name for name (that compare loads no torch: tests/test_architecture.py)."""

from __future__ import annotations

import pytest

from hco_cli.optim import OPTIMIZER_NAMES, optimizer_info
from hco_cli.optimizer_defaults import default_lr, family_and_variant


def test_every_registered_name_and_no_other_has_a_default_rate() -> None:
    for name in OPTIMIZER_NAMES:
        info = optimizer_info(name)
        assert family_and_variant(name) == (info.family, info.variant)
        assert default_lr(name) == info.defaults["lr"]
    assert default_lr("sgd") == 0.01 and default_lr("adamw-hco") == 1e-3


@pytest.mark.parametrize("name", ["sgd-plain", "lion", "sgd-x", "adamw-", "-hco", ""])
def test_an_unknown_name_has_none(name: str) -> None:
    assert family_and_variant(name) is None and default_lr(name) is None

