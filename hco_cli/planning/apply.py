"""A network plan applied to a training config (``hco train --plan auto`` / ``plan: auto``).

The plan replaces ``data.patch_size``, both batch sizes and the network layout
(``model.strides`` and ``model.kernels``, left unset where the plan is today's isotropic
V-Net, so that such configs stay as they were) and, for CMT, the UMIX blocks where UCMT's
8 x 8 x 8 do not divide the patch. Where the planned patch differs from the configured one,
the validation (and default prediction) stride becomes half the planned patch, nnU-Net's
overlap: a configured stride was chosen for its patch, and the reference code's 18/18/4 under
a planned patch of another size costs tens of times the windows (a 300 x 300 x 200 volume
under a 128 x 128 x 64 patch: 4235 windows a case against 96). The resolved config saved
with the run holds these values, so a run never re-plans (``--resume`` reads the saved
config).

The dataset's stored plan (``hco plan``) is used when it was made for the config's
framework; otherwise the dataset is planned now for that framework, with the stored plan's
memory target.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hco_cli.config import TrainConfig
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.plan import NetworkPlan, read_plan
from hco_cli.models import ModelConfig
from hco_cli.models.layout import DEFAULT_KERNELS, DEFAULT_STRIDES
from hco_cli.planning.memory import GIB
from hco_cli.planning.planner import PRESETS, PlanOptions, plan_dataset
from hco_cli.planning.rules import UMIX_BLOCKS

AUTO = "auto"
# What a config that names neither computes with: the network the plan must be sized for.
DEFAULT_FILTERS: int = ModelConfig.model_fields["n_filters"].default
DEFAULT_AMP: bool = TrainConfig.model_fields["amp"].default


def network_plan_for(data: Path, framework: str, *, n_filters: int = 16,
                     amp: bool = True) -> NetworkPlan:
    """The stored plan of dataset ``data`` where it was made for ``framework`` and a network
    of ``n_filters`` filters computing with (``amp``) or without bf16, or a new one for them:
    a patch and batch sized for another width or precision would not fit the same memory."""
    PreparedDataset(Path(data))  # one clear error for a folder that is no prepared dataset
    stored = read_plan(Path(data)).network
    if (stored is not None and stored.framework == framework and stored.n_filters == n_filters
            and stored.amp == amp):
        return stored
    source = read_plan(Path(data)).source.split(":", 1)[0]
    preset = next((p for p in PRESETS.values() if p.source == source), None)
    gpu = stored.memory_target_bytes / GIB if stored is not None else None
    options = PlanOptions(framework=framework,  # type: ignore[arg-type]
                          preset="auto" if preset and preset.framework == framework else "none",
                          gpu_memory_gb=gpu, n_filters=n_filters, amp=amp)
    return plan_dataset(Path(data), options).network


def apply_plan(raw: dict[str, Any], network: NetworkPlan) -> dict[str, Any]:
    """A copy of the raw config ``raw`` with the plan's patch, batches and layout."""
    out = copy.deepcopy(raw)
    data = out.setdefault("data", {})
    if list(data.get("patch_size") or []) != list(network.patch_size):
        # A configured stride belongs to the configured patch (the reference code's 18/18/4
        # to its 112x112x80); for another patch, nnU-Net's half-patch step.
        out.setdefault("validation", {})["stride"] = half_patch_stride(network.patch_size)
    data["patch_size"] = list(network.patch_size)
    data["labeled_batch_size"] = network.labeled_batch_size
    data["unlabeled_batch_size"] = network.unlabeled_batch_size
    model = out.setdefault("model", {})
    for key, rows, default in (("strides", network.strides, DEFAULT_STRIDES),
                               ("kernels", network.kernels, DEFAULT_KERNELS)):
        if tuple(tuple(r) for r in rows) == default:
            model.pop(key, None)
        else:
            model[key] = [list(r) for r in rows]
    framework = out.get("framework")
    if isinstance(framework, dict) and framework.get("name") == "cmt":
        if tuple(network.umix_blocks) == (UMIX_BLOCKS,) * 3:
            framework.pop("blocks_per_axis", None)
        else:
            framework["blocks_per_axis"] = list(network.umix_blocks)
    return out


def half_patch_stride(patch: tuple[int, int, int] | list[int]) -> list[int]:
    """Sliding-window steps of half the patch per axis (nnU-Net's tile step 0.5), at least 1."""
    return [max(1, int(p) // 2) for p in patch]


def resolve_plan(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its dataset's plan applied when it asks for one (``plan: auto``).

    Left unchanged when the framework or the data path is missing: validation reports those.
    """
    if raw.get("plan") != AUTO:
        return raw
    framework = raw.get("framework")
    data = raw.get("data")
    if not (isinstance(framework, dict) and isinstance(framework.get("name"), str)
            and isinstance(data, dict) and data.get("path")):
        return raw
    model = raw.get("model")
    model = model if isinstance(model, dict) else {}
    n_filters, amp = model.get("n_filters", DEFAULT_FILTERS), raw.get("amp", DEFAULT_AMP)
    if not (isinstance(n_filters, int) and isinstance(amp, bool)):
        return raw  # validation reports them
    return apply_plan(raw, network_plan_for(Path(str(data["path"])), framework["name"],
                                            n_filters=n_filters, amp=amp))
