"""Plans applied to training configs: today's study configs come back unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from hco_cli.config import TrainConfig
from hco_cli.planning.apply import apply_plan, network_plan_for, resolve_plan
from hco_cli.planning.planner import PlanOptions, plan_dataset, save_network_plan
from hco_cli.training.presets import Overrides, build_config

CONFIGS = Path(__file__).resolve().parents[2] / "sample_configs"


def _without_plan(config: TrainConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    data.pop("plan")
    return data


def test_la_preset_with_plan_auto_is_unchanged(la_prepared: Path) -> None:
    today = build_config(dataset="la", overrides=Overrides(data=la_prepared))
    planned = build_config(dataset="la", overrides=Overrides(data=la_prepared, plan="auto"))
    assert planned.plan == "auto" and today.plan is None
    assert _without_plan(planned) == _without_plan(today)
    assert planned.model.strides is None and planned.model.kernels is None


def test_fetal_short_config_with_its_preset_plan_is_unchanged(fetal_prepared: Path,
                                                               tmp_path: Path) -> None:
    data = tmp_path / "fetal"
    shutil.copytree(fetal_prepared, data)
    save_network_plan(data, plan_dataset(data, PlanOptions(preset="fetal")).network)
    config = CONFIGS / "fetal_cmt_adamw_short.yaml"
    today = build_config(config_file=config, overrides=Overrides(data=data))
    planned = build_config(config_file=config, overrides=Overrides(data=data, plan="auto"))
    assert _without_plan(planned) == _without_plan(today)


def test_anisotropic_plan_sets_layout_and_umix_blocks(aniso_data: Path) -> None:
    network = plan_dataset(aniso_data, PlanOptions(framework="cmt")).network
    raw = {"data": {"path": str(aniso_data), "patch_size": [16, 16, 16]},
           "model": {"name": "vnet", "strides": [[2, 2, 2]] * 4},
           "framework": {"name": "cmt"}}
    out = apply_plan(raw, network)
    assert raw["data"]["patch_size"] == [16, 16, 16]  # a copy: the input is left alone
    assert out["data"]["patch_size"] == list(network.patch_size)
    # another patch than the configured one: the half-patch stride of nnU-Net
    assert out["validation"]["stride"] == [p // 2 for p in network.patch_size]
    assert out["model"]["strides"][0] == [2, 2, 1]
    assert out["framework"]["blocks_per_axis"] == list(network.umix_blocks)
    resolved = resolve_plan({**raw, "plan": "auto"})
    assert resolved["data"]["patch_size"] == out["data"]["patch_size"]
    assert resolve_plan({"plan": "auto"}) == {"plan": "auto"}  # validation reports the rest


def test_a_configured_stride_stays_with_its_own_patch(aniso_data: Path) -> None:
    """The plan keeps the reference stride where the patch is the configured one (the paper
    presets pin theirs) and replaces it where the plan chose another patch."""
    network = plan_dataset(aniso_data, PlanOptions(framework="bcp")).network
    raw = {"data": {"path": str(aniso_data), "patch_size": list(network.patch_size)},
           "framework": {"name": "bcp"}, "validation": {"stride": [18, 18, 4]}}
    assert apply_plan(raw, network)["validation"]["stride"] == [18, 18, 4]
    raw["data"]["patch_size"] = [112, 112, 80]
    assert apply_plan(raw, network)["validation"] == {"stride": [32, 32, 6]}
    assert network.patch_size == (64, 64, 12)


def test_config_auto_follows_the_stored_framework(aniso_data: Path, tmp_path: Path) -> None:
    bcp = build_config(config_file=Path("auto"), overrides=Overrides(data=aniso_data))
    assert bcp.framework.name == "bcp" and bcp.data.patch_size == (64, 64, 12)
    assert bcp.model.size_multiples == (16, 16, 4) and bcp.data.labeled is None
    data = tmp_path / "data"
    shutil.copytree(aniso_data, data)
    save_network_plan(data, plan_dataset(data, PlanOptions(framework="cmt")).network)
    cmt = build_config(config_file=Path("auto"), overrides=Overrides(data=data))
    assert cmt.framework.name == "cmt" and cmt.data.fold is None
    assert cmt.framework.blocks_per_axis == (8, 8, 6)  # type: ignore[union-attr]


@pytest.mark.parametrize("framework", ["supervised", "mean-teacher"])
def test_other_frameworks_plan_too(aniso_data: Path, framework: str) -> None:
    network = plan_dataset(aniso_data, PlanOptions(framework=framework)).network  # type: ignore[arg-type]
    assert network.framework == framework
    assert network.unlabeled_batch_size == (0 if framework == "supervised" else 2)


def test_a_stored_plan_for_another_network_is_not_applied(aniso_data: Path,
                                                          tmp_path: Path) -> None:
    """hco plan --filters 32 --fp32 sized patch and batch for that network: a config of 8
    filters in bf16 gets a plan of its own (the same memory target), not the stored one."""
    data = tmp_path / "data"
    shutil.copytree(aniso_data, data)
    wide = plan_dataset(data, PlanOptions(framework="bcp", n_filters=32, amp=False,
                                          gpu_memory_gb=1)).network
    save_network_plan(data, wide)
    assert network_plan_for(data, "bcp", n_filters=32, amp=False) == wide
    narrow = network_plan_for(data, "bcp", n_filters=8, amp=True)
    assert (narrow.n_filters, narrow.amp) == (8, True)
    assert narrow.memory_target_bytes == wide.memory_target_bytes
    assert network_plan_for(data, "bcp", n_filters=32, amp=True).amp is True
    # resolve_plan asks for the config's network (model.n_filters, amp; else their defaults)
    asked: list[tuple[int, bool]] = []

    def spy(path: Path, framework: str, *, n_filters: int, amp: bool) -> Any:
        asked.append((n_filters, amp))
        return wide

    raw = {"data": {"path": str(data), "patch_size": [16, 16, 16]},
           "model": {"name": "vnet"}, "framework": {"name": "bcp"}, "plan": "auto"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hco_cli.planning.apply.network_plan_for", spy)
        resolve_plan(raw)
        resolve_plan({**raw, "model": {"name": "vnet", "n_filters": 8}, "amp": True})
    assert asked == [(16, False), (8, True)]
