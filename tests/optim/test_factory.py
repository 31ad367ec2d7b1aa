"""The registry, the factory's defaults and its refusal of invalid hyperparameters."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hco_cli.errors import ConfigError
from hco_cli.optim import (
    OPTIMIZER_NAMES,
    REGISTRY,
    SGD,
    Adam,
    AdamW,
    build_optimizer,
    optimizer_family,
    plain_variant,
)


def _p() -> list[torch.Tensor]:
    return [torch.zeros(3, requires_grad=True)]


def test_registry_lists_the_nine_names() -> None:
    assert OPTIMIZER_NAMES == ("sgd", "sgd-co", "sgd-hco", "adam", "adam-co", "adam-hco",
                               "adamw", "adamw-co", "adamw-hco")
    assert all(REGISTRY[n].description for n in OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_build_fills_registry_defaults(name: str) -> None:
    opt = build_optimizer(name, _p())
    info = REGISTRY[name]
    group = opt.param_groups[0]
    assert isinstance(opt, {"sgd": SGD, "adam": Adam, "adamw": AdamW}[info.family])
    assert group["variant"] == info.variant
    for key, value in info.defaults.items():
        assert group[key] == value
    assert group["mask_eps"] == (None if info.variant == "plain" else 1e-3)
    assert opt.hierarchical == (info.variant == "hco")


def test_family_defaults_follow_the_reference_codebases() -> None:
    sgd = build_optimizer("sgd", _p()).param_groups[0]
    assert (sgd["lr"], sgd["momentum"], sgd["weight_decay"]) == (0.01, 0.9, 1e-4)
    adam = build_optimizer("adam", _p()).param_groups[0]
    assert (adam["lr"], adam["weight_decay"], adam["decoupled_weight_decay"]) == (1e-3, 0.0, False)
    adamw = build_optimizer("adamw", _p()).param_groups[0]
    assert (adamw["lr"], adamw["betas"], adamw["eps"], adamw["weight_decay"]) == (
        1e-3, (0.9, 0.999), 1e-8, 1e-2)
    assert adamw["decoupled_weight_decay"] is True
    assert build_optimizer("sgd-hco", _p()).param_groups[0]["double_decay"] is True


@pytest.mark.parametrize(("name", "expected"), [
    ("sgd", "sgd"), ("sgd-hco", "sgd"), ("adam-co", "adam"), ("adamw-co", "adamw"),
    ("adamw-hco", "adamw")])
def test_plain_variant_and_family(name: str, expected: str) -> None:
    assert plain_variant(name) == expected
    assert optimizer_family(name) == expected


@pytest.mark.parametrize("call", [build_optimizer, plain_variant, optimizer_family])
def test_unknown_name_lists_valid_choices(call: Any) -> None:
    args = ("lion", _p()) if call is build_optimizer else ("lion",)
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and "'lion'" in message
    assert all(name in message for name in OPTIMIZER_NAMES)


@pytest.mark.parametrize(("name", "kwargs", "fragment"), [
    ("sgd", {"lr": -0.1}, "Invalid learning rate: -0.1 (must be >= 0.0)"),
    ("sgd-hco", {"momentum": 1.0}, "Invalid momentum: 1.0 (must be >= 0.0 and < 1.0)"),
    ("sgd-co", {"momentum": -0.5}, "Invalid momentum: -0.5"),
    ("sgd", {"weight_decay": -1e-4}, "Invalid weight_decay: -0.0001"),
    ("adam", {"betas": (1.0, 0.999)}, "Invalid beta1 (betas[0]): 1.0 (must be >= 0.0 and < 1.0)"),
    ("adamw-hco", {"betas": (0.9, -0.1)}, "Invalid beta2 (betas[1]): -0.1"),
    ("adamw", {"betas": (0.9,)}, "Invalid betas: (0.9,) (must be a pair"),
    ("adam", {"eps": 0.0}, "Invalid eps: 0.0 (must be > 0.0)"),
    ("adam", {"lr": float("nan")}, "Invalid learning rate: nan"),
    ("adam-co", {"mask_eps": 0.0}, "Invalid mask_eps: 0.0 (must be > 0.0)"),
    ("sgd-hco", {"mask_eps": -1.0}, "Invalid mask_eps: -1.0"),
    ("adamw-co", {"mask_norm": "median"}, "Invalid mask_norm: 'median' (choose one of clamp,"),
    ("adam-co", {"mask_norm": "count_plus_one", "mask_eps": 0.1},
     "mask_eps does not apply to mask_norm 'count_plus_one'"),
    ("sgd-co", {"mask_eps": "eps"}, "mask_eps='eps' needs an optimizer with an eps"),
    ("adam", {"momentum": 0.9}, "momentum do not apply to optimizer 'adam'; valid: betas, eps,"),
    ("sgd", {"betas": (0.9, 0.99)}, "betas do not apply to optimizer 'sgd'"),
    ("sgd", {"mask_eps": 1e-3}, "mask_eps do not apply to optimizer 'sgd'"),
    ("adamw-hco", {"double_decay": False}, "double_decay do not apply to optimizer 'adamw-hco'"),
    ("sgd-co", {"double_decay": False}, "double_decay do not apply to optimizer 'sgd-co'"),
    ("sgd-hco", {"double_decay": "yes"}, "Invalid double_decay: 'yes'"),
    ("sgd", {"lr": "0.1"}, "Invalid learning rate: '0.1' (must be a number)"),
])
def test_invalid_hyperparameters_are_refused(name: str, kwargs: dict[str, Any],
                                             fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_optimizer(name, _p(), **kwargs)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)


def test_classes_refuse_options_that_do_not_apply() -> None:
    with pytest.raises(ConfigError, match="apply only to the co and hco variants"):
        SGD(_p(), mask_eps=1e-3)
    with pytest.raises(ConfigError, match="double_decay applies only to the hco variant"):
        SGD(_p(), variant="co", double_decay=False)
    with pytest.raises(ConfigError, match="Invalid variant: 'hcoo'"):
        AdamW(_p(), variant="hcoo")


def test_param_group_overrides_are_validated() -> None:
    opt = build_optimizer("adamw-hco", _p())
    with pytest.raises(ConfigError, match="Invalid learning rate: -1"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": -1})
    with pytest.raises(ConfigError, match="cannot change the optimizer's variant"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "variant": "co"})
    assert len(opt.param_groups) == 1


def test_betas_from_a_config_list_are_accepted() -> None:
    opt = build_optimizer("adamw", _p(), betas=[0.5, 0.9])
    assert opt.param_groups[0]["betas"] == (0.5, 0.9)
