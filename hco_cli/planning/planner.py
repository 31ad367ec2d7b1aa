"""``hco plan`` as a library: a network plan for a prepared dataset, from its fingerprint.

:func:`plan_dataset` reads the dataset's fingerprint (:mod:`hco_cli.data.fingerprint`), applies
the rules of :mod:`hco_cli.planning.rules` under the memory model of
:mod:`hco_cli.planning.memory`, and returns a :class:`~hco_cli.data.plan.NetworkPlan`;
:func:`save_network_plan` adds it to the dataset's ``plans.json``.

The memory target defaults to :func:`reference_target`: the estimate of the paper's LA
setting (BCP, 112 x 112 x 80, 4 + 4 patches, bf16), so plans are sized like the configuration
the reference code was tuned with; ``gpu_memory_gb`` uses more (or less) of a GPU. The
GPU-resident dataset is reported apart and not counted against the target (``data.device:
cpu`` keeps it on the host).

Batch sizes start at the framework's reference (4 + 4; supervised 4), at most the number of
labeled cases (BCP: rounded down to even). When that leaves a
patch below a quarter of the data-capped one, both are halved (BCP keeps them even and equal)
and the larger patch wins. Paper presets (:data:`PRESETS`) pin the patch and batch sizes of
today's study configs; ``la`` and ``pancreas`` are chosen automatically for datasets prepared
from those sources, ``fetal`` (the short CMT study at 1.2 mm) by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.fingerprint import CaseFingerprint, load_fingerprint
from hco_cli.data.plan import NetworkPlan, read_plan, write_plan
from hco_cli.errors import ConfigError, DataError
from hco_cli.models.layout import DEFAULT_STRIDES
from hco_cli.planning import rules
from hco_cli.planning.memory import GIB, MemoryEstimate, NetworkShape, estimate_memory

Framework = Literal["supervised", "mean-teacher", "bcp", "cmt"]
Triple = tuple[int, int, int]
SPACING_RTOL = 0.02
SMALL_PATCH = 0.25  # below this fraction of the data-capped patch, try halved batches


@dataclass(frozen=True)
class Preset:
    """A paper configuration the plan reproduces exactly (patch, batches, framework)."""

    framework: Framework
    patch: Triple
    labeled: int
    unlabeled: int
    spacing: tuple[float, float, float]
    config: str  # the sample config it mirrors
    source: str | None = None  # source kind ("la:...") that selects it automatically


PRESETS: dict[str, Preset] = {
    "la": Preset("bcp", (112, 112, 80), 4, 4, (0.625,) * 3, "la_bcp_sgd.yaml", "la"),
    "pancreas": Preset("bcp", (96, 96, 96), 4, 4, (1.0,) * 3, "pancreas_bcp_adam.yaml",
                       "pancreas"),
    "fetal": Preset("cmt", (64, 64, 48), 2, 2, (1.2,) * 3, "fetal_cmt_adamw_short.yaml"),
}


class PlanOptions(BaseModel):
    """What ``hco plan`` is asked for; None fields take the preset's or the rule's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    framework: Framework | None = None
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    labeled_batch_size: int | None = Field(default=None, ge=1)
    unlabeled_batch_size: int | None = Field(default=None, ge=0)
    n_filters: int = Field(default=16, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    amp: bool = True
    preset: str = Field(default="auto", description="auto, none or a name of PRESETS")


@dataclass(frozen=True)
class PlanResult:
    """The plan, its memory estimate and what the user should know about it."""

    network: NetworkPlan
    estimate: MemoryEstimate
    notes: list[str]


def reference_target(*, amp: bool = True) -> int:
    """Bytes of one BCP iteration on LA (112 x 112 x 80, 4 + 4): the default target."""
    net = NetworkShape(patch=(112, 112, 80), strides=DEFAULT_STRIDES)
    return estimate_memory(net, framework="bcp", labeled=4, unlabeled=4, amp=amp).total


def _preset(options: PlanOptions, source: str) -> Preset | None:
    if options.preset == "none":
        return None
    if options.preset == "auto":
        kind = source.split(":", 1)[0]
        return next((p for p in PRESETS.values() if p.source == kind), None)
    if options.preset not in PRESETS:
        raise ConfigError(f"unknown plan preset {options.preset!r}; choose auto, none or one "
                          f"of: {', '.join(PRESETS)}")
    return PRESETS[options.preset]


def _median(values: list[tuple[float, ...]]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in np.median(np.asarray(values, dtype=float), axis=0))
    return (x, y, z)


def _batches(framework: str, options: PlanOptions, labeled_cases: int) -> tuple[int, int]:
    """The reference 4 (+ 4), at most the labeled cases (each batch draws distinct ones)."""
    fill = min(4, labeled_cases) // 2 * 2 if framework == "bcp" else min(4, labeled_cases)
    labeled = options.labeled_batch_size or max(fill, 1)
    unlabeled = options.unlabeled_batch_size
    if unlabeled is None:
        unlabeled = 0 if framework == "supervised" else labeled
    if framework == "bcp" and (labeled % 2 or unlabeled != labeled):
        raise ConfigError(f"bcp pairs batch halves: the labeled batch must be even and equal "
                          f"to the unlabeled one (got {labeled} + {unlabeled})")
    return labeled, unlabeled


def _dataset_bytes(cases: list[CaseFingerprint], channels: int) -> int:
    return sum(math.prod(c.shape) * (4 * channels + (1 if c.has_label else 0)) for c in cases)


class _Planner:
    """One planning problem: spacing, median case, network width, memory target."""

    def __init__(self, spacing: tuple[float, float, float], median: tuple[float, ...],
                 options: PlanOptions, framework: str, in_channels: int,
                 num_classes: int) -> None:
        self.spacing, self.median, self.options = spacing, median, options
        self.framework, self.in_channels, self.num_classes = framework, in_channels, num_classes
        self.target = (int(options.gpu_memory_gb * GIB) if options.gpu_memory_gb
                       else reference_target(amp=options.amp))

    def estimate(self, patch: Triple, layout: rules.Layout, batches: tuple[int, int]
                 ) -> MemoryEstimate:
        net = NetworkShape(patch=patch, strides=layout[0], n_filters=self.options.n_filters,
                           in_channels=self.in_channels, num_classes=self.num_classes,
                           dropout=True)
        return estimate_memory(net, framework=self.framework, labeled=batches[0],
                               unlabeled=batches[1], kernels=layout[1],
                               optimizer=self.options.optimizer, amp=self.options.amp)

    def patch(self, batches: tuple[int, int]) -> tuple[Triple, rules.Layout] | None:
        def fits(patch: Triple, layout: rules.Layout) -> bool:
            return self.estimate(patch, layout, batches).total <= self.target

        try:
            return rules.plan_patch(self.spacing, self.median, fits)
        except DataError:
            return None

    def choose(self, batches: tuple[int, int], pinned: bool) -> tuple[
            Triple, rules.Layout, tuple[int, int]]:
        """The largest patch at ``batches``, or at halved batches when that is much larger."""
        best = self.patch(batches)
        cap = math.prod(rules.data_cap(self.spacing, self.median))
        halved = (max(batches[0] // 2, 2 if self.framework == "bcp" else 1),
                  batches[1] // 2 if batches[1] else 0)
        if self.framework == "bcp":
            halved = (halved[0], halved[0])
        small = best is None or math.prod(best[0]) < SMALL_PATCH * cap
        if small and not pinned and halved != batches:
            other = self.patch(halved)
            if other is not None and (best is None or math.prod(other[0]) > math.prod(best[0])):
                return other[0], other[1], halved
        if best is None:
            raise ConfigError(f"no patch fits the memory target of {self.target / GIB:.1f} GiB "
                              f"at batch {batches[0]} + {batches[1]}; raise --gpu-memory")
        return best[0], best[1], batches


def plan_dataset(root: Path, options: PlanOptions | None = None) -> PlanResult:
    """Plan spacing, patch, network layout and batch sizes for the prepared dataset ``root``."""
    options = options or PlanOptions()
    dataset = PreparedDataset(root)
    data_plan = dataset.plan()
    training = [*dataset.splits.labeled, *dataset.splits.unlabeled]
    cases = load_fingerprint(dataset).select(training)
    if not cases:
        raise DataError(f"{root}: no training cases to plan from")
    preset = _preset(options, data_plan.source)
    framework = options.framework or (preset.framework if preset else "bcp")
    notes: list[str] = []
    spacing = _median([c.spacing for c in cases])
    # A spacing chosen at prepare (--spacing) is the target; otherwise the rule's.
    target = (data_plan.preprocess.spacing
              or rules.target_spacing([c.original_spacing for c in cases]))
    if not np.allclose(spacing, target, rtol=SPACING_RTOL) or len(
            {c.spacing for c in cases}) > 1:
        notes.append(f"cases are stored at their native spacing (median {_mm(spacing)}); the "
                     f"planned spacing is {_mm(target)}: prepare with --spacing "
                     f"{','.join(f'{v:.4g}' for v in target)} to resample them to it (this "
                     "plan is for the stored cases)")
    median = _median([c.shape for c in cases])
    planner = _Planner(spacing, median, options, framework, dataset.info.channels,
                       dataset.num_classes)
    if preset is not None:
        if options.framework not in (None, preset.framework):
            raise ConfigError(f"plan preset {options.preset} is for {preset.framework}; drop "
                              f"--framework or use --preset none")
        if not np.allclose(spacing, preset.spacing, rtol=SPACING_RTOL):
            raise ConfigError(f"plan preset {options.preset} is defined at {_mm(preset.spacing)}"
                              f" but {root} is stored at {_mm(spacing)}")
        patch = preset.patch
        layout = rules.layout(spacing, patch)
        batches = (options.labeled_batch_size or preset.labeled,
                   options.unlabeled_batch_size if options.unlabeled_batch_size is not None
                   else preset.unlabeled)
        notes.append(f"paper preset {_preset_name(preset)}: patch and batch sizes of "
                     f"sample_configs/{preset.config}")
    else:
        batches = _batches(framework, options, len(dataset.splits.labeled))
        pinned = options.labeled_batch_size is not None
        patch, layout, batches = planner.choose(batches, pinned)
    estimate = planner.estimate(patch, layout, batches)
    network = NetworkPlan(
        framework=framework, preset=_preset_name(preset) if preset else None,
        target_spacing=target, spacing=spacing,
        median_shape=(round(median[0]), round(median[1]), round(median[2])),
        patch_size=patch, strides=layout[0], kernels=layout[1], n_filters=options.n_filters,
        labeled_batch_size=batches[0], unlabeled_batch_size=batches[1],
        umix_blocks=rules.umix_blocks(patch), amp=options.amp,
        memory_target_bytes=planner.target, memory_estimate_bytes=estimate.total,
        dataset_bytes=_dataset_bytes(cases, dataset.info.channels))
    return PlanResult(network=network, estimate=estimate, notes=notes)


def save_network_plan(root: Path, network: NetworkPlan) -> Path:
    """Add ``network`` to the dataset's ``plans.json`` (atomically); return its path."""
    data_plan = read_plan(Path(root))
    return write_plan(Path(root), data_plan.model_copy(update={"network": network}))


def _preset_name(preset: Preset) -> str:
    return next(name for name, p in PRESETS.items() if p is preset)


def _mm(spacing: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.3g}" for v in spacing) + " mm"
