"""Checks of a training configuration against its dataset, made before anything is written.

Each failure is one ConfigError line that names the value and what would work, so a config
that the network or the data cannot take never leaves a half-made run folder behind.
"""

from __future__ import annotations

import math
from pathlib import Path

from hco_cli.config import TrainConfig
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.plan import PLAN_FILE, read_plan
from hco_cli.errors import ConfigError
from hco_cli.models.layout import SIZE_MULTIPLE, Triple
from hco_cli.ssl.config import CMTConfig
from hco_cli.ssl.umix import check_divisible

AXES = "xyz"


def check_against_dataset(config: TrainConfig, dataset: PreparedDataset,
                          training: list[str], *, resuming: bool = False) -> None:
    """Patch size, classes and label map of ``config`` against ``dataset``'s ``training``
    cases (and, when ``resuming``, against the label map the run started with)."""
    multiples = config.model.size_multiples
    check_patch_size(config.data.patch_size, multiples)
    check_batches(config)
    if dataset.num_classes < 2:
        raise ConfigError(f"dataset {dataset.root} has no foreground class (label values "
                          f"{list(dataset.labels.values)}); prepare it with its labels")
    check_patch_fits(config.data.patch_size, dataset, training, multiples)
    runs = [("--init-from", config.init_from), ("--resume", config.run_dir if resuming else None)]
    for option, run in runs:
        if run is not None:
            check_run_labels(Path(run), dataset, option=option)


def check_patch_size(patch: tuple[int, int, int],
                     multiples: Triple = (SIZE_MULTIPLE,) * 3) -> None:
    """Every axis a multiple of its product of strides (16: the V-Net's four halvings)."""
    for axis, size, multiple in zip(AXES, patch, multiples, strict=True):
        if size % multiple:
            fit = max(multiple, round(size / multiple) * multiple)
            why = ("the V-Net halves each axis 4 times" if multiples == (SIZE_MULTIPLE,) * 3
                   else f"model.strides halve {axis} {multiple.bit_length() - 1} times")
            raise ConfigError(
                f"data.patch_size {list(patch)}: {axis} = {size} is not a multiple of "
                f"{multiple} ({why}); use {fit}, for example")


def check_batches(config: TrainConfig) -> None:
    """Batch sizes the framework can pair up, and BatchNorm's need for more than one value per
    channel at the bottleneck of the smallest batch a network sees in training."""
    d, fw, name = config.data, config.framework, config.framework.name
    if name == "bcp":
        if d.labeled_batch_size % 2:
            raise ConfigError(f"framework bcp pastes one half of each labeled batch into the "
                              f"other: data.labeled_batch_size must be even (got "
                              f"{d.labeled_batch_size})")
        self_training = config.phases is None or "selftrain" in config.phases
        if self_training and d.unlabeled_batch_size != d.labeled_batch_size:
            raise ConfigError(f"framework bcp mixes each labeled half with an unlabeled half: "
                              f"data.unlabeled_batch_size must equal data.labeled_batch_size "
                              f"({d.labeled_batch_size}), got {d.unlabeled_batch_size}")
    elif name in ("mean-teacher", "cmt") and d.unlabeled_batch_size < 1:
        raise ConfigError(f"framework {name} learns from unlabeled images in every step: "
                          "data.unlabeled_batch_size must be at least 1")
    if isinstance(fw, CMTConfig) and fw.umix and not check_divisible(d.patch_size,
                                                                      fw.blocks_per_axis):
        raise ConfigError(f"data.patch_size {list(d.patch_size)}: cmt umix cuts patches into "
                          f"{fw.blocks_per_axis} blocks per axis; use multiples of "
                          f"{fw.blocks_per_axis}")
    multiples = config.model.size_multiples
    bottleneck = math.prod(p // m for p, m in zip(d.patch_size, multiples, strict=True))
    if config.model.normalization == "instancenorm" and bottleneck < 2:
        raise ConfigError(
            f"InstanceNorm needs more than one voxel per channel at the V-Net's bottleneck "
            f"(patch / {list(multiples)} per axis): a patch of {list(d.patch_size)} gives "
            f"{bottleneck}; use a larger patch")
    if config.model.normalization == "batchnorm":
        smallest = (d.labeled_batch_size // 2 if name == "bcp"
                    else min(d.labeled_batch_size, d.unlabeled_batch_size or d.labeled_batch_size))
        values = smallest * bottleneck
        if values < 2:
            raise ConfigError(
                f"BatchNorm needs more than one value per channel at the V-Net's bottleneck "
                f"(patch / {list(multiples)} per axis, times the batch): a batch of {smallest} "
                f"patch(es) of {list(d.patch_size)} gives {values}; use a larger patch or "
                "batch, or model.normalization instancenorm")


def check_patch_fits(patch: tuple[int, int, int], dataset: PreparedDataset,
                     training: list[str], multiples: Triple = (SIZE_MULTIPLE,) * 3) -> None:
    """Refuse a patch axis longer than every training case padded to the network's multiple:
    its patches would hold only padding there."""
    if not training:
        return
    largest = [max(dataset.geometry(case).prepared.shape[a] for case in training)
               for a in range(3)]
    for axis, size, extent, multiple in zip(AXES, patch, largest, multiples, strict=True):
        padded = -(-extent // multiple) * multiple
        if size > padded:
            raise ConfigError(
                f"data.patch_size {list(patch)}: {axis} = {size} is larger than the largest "
                f"training case of {dataset.root} ({extent} voxels, {padded} padded to a "
                f"multiple of {multiple}); use at most {padded}")


def check_run_labels(run: Path, dataset: PreparedDataset, *, option: str) -> None:
    """Refuse a run (``--init-from`` or the run resumed) trained on another label map."""
    path = run / PLAN_FILE
    if not path.is_file():
        return
    trained = read_plan(path).labels
    if trained.values != dataset.labels.values or (
            trained.ignore_value != dataset.labels.ignore_value):
        raise ConfigError(
            f"{option} {run} was trained on label values {list(trained.values)} (ignore "
            f"{trained.ignore_value}) but {dataset.root} has {list(dataset.labels.values)} "
            f"(ignore {dataset.labels.ignore_value})")
