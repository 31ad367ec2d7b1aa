"""Named study presets and the resolution of a config file or preset plus command-line overrides.

``hco train --dataset la --optimizer sgd-hco`` is Study 1 of the paper (BCP on Left Atrium);
each preset equals one YAML file in ``sample_configs/`` apart from the data path.

``--config auto --data DIR`` trains a dataset nobody tuned hco for: the LA study's BCP recipe
(or the fetal study's CMT recipe when the dataset was planned for CMT) with ``plan: auto``,
so patch, batch sizes and network layout come from the dataset's plan
(:mod:`hco_cli.planning`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.plan import PLAN_FILE, read_plan
from hco_cli.errors import ConfigError
from hco_cli.planning.apply import AUTO, resolve_plan

_LA: dict[str, Any] = {
    # Study 1: BCP on LA (PROTOCOLS 1.1-1.6): 8 labeled, 112x112x80, SGD 0.01, 2K + 15K.
    "data": {"path": "data/la", "labeled": 8, "patch_size": [112, 112, 80],
             "labeled_batch_size": 4, "unlabeled_batch_size": 4, "augment": "bcp"},
    "model": {"name": "vnet", "n_filters": 16, "normalization": "batchnorm", "dropout": True},
    "framework": {"name": "bcp", "pretrain_iterations": 2000, "selftrain_iterations": 15000},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "validation": {"every": 200, "split": "val", "select_on": "val", "stride": [18, 18, 4]},
    "checkpoint_every": 1000, "seed": 1337,
    "amp": True, "channels_last": True,
}
_PANCREAS: dict[str, Any] = {
    # Study 2: BCP on NIH Pancreas-CT (PROTOCOLS 1.7, Implications 7): 96^3, no augmentation,
    # unlabeled center crops, InstanceNorm V-Net without dropout, Adam 1e-3 without decay,
    # 60 + 200 epochs of 30 and 25 iterations, no LR schedule.
    "data": {"path": "data/pancreas", "labeled": 12, "patch_size": [96, 96, 96],
             "labeled_batch_size": 4, "unlabeled_batch_size": 4, "augment": "none",
             "unlabeled_crop": "center"},
    "model": {"name": "vnet", "n_filters": 16, "normalization": "instancenorm", "dropout": False},
    "framework": {"name": "bcp", "pretrain_iterations": 1800, "selftrain_iterations": 5000,
                  "lr_decay": 1.0, "lcc_connectivity": 18, "restore_optimizer": True},
    "optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.0},
    "validation": {"every": 500, "split": "val", "select_on": "val", "stride": [18, 18, 4]},
    "checkpoint_every": 1000, "seed": 2020,
    "amp": True, "channels_last": True,
}
_FETAL: dict[str, Any] = {
    # Study 3: CMT on fetal MRI (PROTOCOLS 2, Implications 10; paper 4.3): folds L_i x U_j,
    # 144x144x64 patches, flips, 4 + 4 patches, AdamW 1e-4 (wd 0.01), 200 epochs.
    "data": {"path": "data/fetal", "fold": "L0U0", "patch_size": [144, 144, 64],
             "labeled_batch_size": 4, "unlabeled_batch_size": 4, "augment": "flip",
             "unlabeled_includes_labeled": True},
    "model": {"name": "vnet", "n_filters": 16, "normalization": "batchnorm", "dropout": False},
    # One UCMT epoch = ceil((5 labeled + 150 unlabeled) / 4) = 39 iterations for the paper's folds.
    "framework": {"name": "cmt", "epochs": 200, "iterations_per_epoch": 39},
    "optimizer": {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.01},
    "validation": {"every": 39, "split": "val", "select_on": "val", "stride": [18, 18, 4]},
    "checkpoint_every": 390, "seed": 1,
    "amp": True, "channels_last": True,
}
_SYNTHETIC: dict[str, Any] = {
    # The quick CPU demo: phantoms from `hco prepare synthetic --out data/synthetic --val 2`.
    "data": {"path": "data/synthetic", "patch_size": [32, 32, 16], "labeled_batch_size": 2,
             "unlabeled_batch_size": 2, "augment": "bcp", "device": "auto"},
    "model": {"name": "vnet", "n_filters": 8, "normalization": "batchnorm", "dropout": True},
    "framework": {"name": "bcp", "pretrain_iterations": 40, "selftrain_iterations": 160,
                  "lr_decay_every": 80},
    "optimizer": {"name": "sgd-hco", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "validation": {"every": 40, "split": "val", "select_on": "val", "stride": [16, 16, 8]},
    "checkpoint_every": 40, "log_every": 10, "seed": 0,
}
PRESETS: dict[str, dict[str, Any]] = {
    "la": _LA, "pancreas": _PANCREAS, "fetal": _FETAL, "synthetic": _SYNTHETIC}
# The `hco prepare` line that makes each preset's dataset at its default path.
FETAL_ATLAS = "'<atlas>/*/srr.nii.gz' --labels '<atlas>/*/parcellation.nii.gz'"
PREPARE_LINES: dict[str, str] = {
    "la": "hco prepare la <UA-MT LA root with train.list> --out data/la --val 4",
    "pancreas": "hco prepare pancreas <BCP Pancreas h5 folder> --out data/pancreas",
    "fetal": (f"hco prepare generic --images {FETAL_ATLAS} --test 5 --val 2 --labeled 4 "
              "--folds-labeled 2 --folds-unlabeled 2 --fold-size 2 --out data/fetal"),
    "synthetic": "hco prepare synthetic --out data/synthetic --val 2 --classes 1",
}


@dataclass(frozen=True)
class Overrides:
    """Command-line changes applied on top of a config file or preset (None = unchanged)."""

    optimizer: str | None = None
    labeled: int | None = None
    seed: int | None = None
    iterations: int | None = None
    fold: str | None = None
    run_dir: Path | None = None
    data: Path | None = None
    device: str | None = None
    init_from: Path | None = None
    select_on: str | None = None
    deterministic: bool | None = None  # None: the config's
    processes: int | None = None
    sync_batchnorm: bool | None = None
    plan: str | None = None
    sinks: tuple[str, ...] | None = None  # --log: tracking sinks besides metrics.jsonl


# --fold none: no fold, the dataset's labeled/unlabeled split (a preset's or config's fold unset).
NO_FOLD = "none"


def preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``'s raw config."""
    if name not in PRESETS:
        raise ConfigError(f"unknown dataset preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, ...)")
    return data


def build_config(*, config_file: Path | None = None, dataset: str | None = None,
                 overrides: Overrides | None = None) -> TrainConfig:
    """The TrainConfig of ``--config FILE`` or ``--dataset NAME`` with the overrides applied."""
    if (config_file is None) == (dataset is None):
        raise ConfigError("give exactly one of --config FILE or --dataset "
                          f"({', '.join(PRESETS)})")
    o = overrides or Overrides()
    if config_file is not None and str(config_file) == AUTO and not Path(AUTO).is_file():
        raw, source = auto_config(o.data), "--config auto"
    else:
        raw = load_yaml(config_file) if config_file is not None else preset(str(dataset))
        source = str(config_file) if config_file is not None else f"preset {dataset}"
    sections: dict[str, dict[str, Any]] = {
        "data": {"labeled": o.labeled, "fold": o.fold, "path": o.data},
        "optimizer": {"name": o.optimizer}, "validation": {"select_on": o.select_on},
        "distributed": {"processes": o.processes,
                        "sync_batchnorm": o.sync_batchnorm}}
    for section, values in sections.items():
        for key, value in values.items():
            if value is not None:
                raw.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    if o.fold is not None and o.fold.lower() == NO_FOLD:  # --fold none: the dataset's own split
        raw["data"]["fold"] = None
    if o.sinks is not None:
        raw.setdefault("tracking", {})["sinks"] = list(o.sinks)
    top = {"seed": o.seed, "run_dir": o.run_dir, "device": o.device, "init_from": o.init_from}
    raw.update({k: str(v) if isinstance(v, Path) else v for k, v in top.items() if v is not None})
    if o.deterministic is not None:
        raw["deterministic"] = o.deterministic
    if o.plan is not None:
        if o.plan != AUTO:
            raise ConfigError(f"--plan {o.plan!r}: the only plan is 'auto' (the dataset's)")
        raw["plan"] = AUTO
    config = validate_config(resolve_plan(raw), source=source)
    if o.iterations is not None:
        config = with_iterations(config, o.iterations)
    return config


def auto_config(data: Path | None) -> dict[str, Any]:
    """The raw config of ``--config auto``: a study recipe whose sizes come from the plan."""
    if data is None:
        raise ConfigError("--config auto needs --data DIR (a prepared dataset)")
    stored = read_plan(Path(data)).network if (Path(data) / PLAN_FILE).is_file() else None
    raw = preset("fetal" if stored is not None and stored.framework == "cmt" else "la")
    for key in ("labeled", "fold"):
        raw["data"].pop(key, None)
    raw["data"]["path"] = str(data)
    raw["plan"] = AUTO
    return raw


def with_iterations(config: TrainConfig, total: int) -> TrainConfig:
    """Set the run's total iteration count to ``total`` (the ``--iterations`` option).

    supervised / mean-teacher: ``iterations = total``. bcp: ``total`` is split between pre- and
    self-training in the configured proportion (pretrain = round(total * pre / (pre + self)),
    self-training gets the rest and at least 1). cmt: ``epochs = max(1, round(total /
    iterations_per_epoch))``, keeping the epoch length that UCMT's ramp-up is defined on, so the
    total is a multiple of it. Learning-rate schedules, validation and checkpoint intervals are
    not rescaled.
    """
    if total < 1:
        raise ConfigError(f"--iterations must be >= 1, got {total}")
    fw = config.framework.model_dump(mode="json")
    if fw["name"] in ("supervised", "mean-teacher"):
        fw["iterations"] = total
    elif fw["name"] == "bcp":
        pre, post = fw["pretrain_iterations"], fw["selftrain_iterations"]
        fw["pretrain_iterations"] = min(round(total * pre / (pre + post)), total - 1)
        fw["selftrain_iterations"] = total - fw["pretrain_iterations"]
    else:
        fw["epochs"] = max(1, round(total / fw["iterations_per_epoch"]))
    data = config.model_dump(mode="json")
    data["framework"] = fw
    return validate_config(data, source="--iterations")


def iterations_note(config: TrainConfig, requested: int) -> str | None:
    """What ``--iterations`` gave where it is not what was asked: CMT trains whole epochs of
    UCMT's length (:func:`with_iterations`), so the total is a multiple of it."""
    fw = config.framework.model_dump(mode="json")
    if fw["name"] != "cmt":
        return None
    total = fw["epochs"] * fw["iterations_per_epoch"]
    if total == requested:
        return None
    return (f"cmt trains whole epochs of {fw['iterations_per_epoch']} iterations "
            f"(framework.iterations_per_epoch): --iterations {requested} gives "
            f"{fw['epochs']} epoch{'s' if fw['epochs'] != 1 else ''}, {total} iterations")


def prepare_line(config_file: Path) -> str | None:
    """The ``# Prepare:`` line of a config file's comments (continued over lines that end in
    a backslash), as the sample configs state it."""
    try:
        lines = Path(config_file).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    found: list[str] = []
    for line in lines:
        text = line.lstrip("#").strip()
        if not found and line.startswith("#") and text.startswith("Prepare:"):
            found.append(text.removeprefix("Prepare:").strip())
        elif found and found[-1].endswith("\\") and line.startswith("#"):
            found[-1] = found[-1].removesuffix("\\").strip()
            found.append(text)
        elif found:
            break
    return " ".join(found) or None


def check_prepared(config: TrainConfig, *, preset: str | None = None,
                   config_file: Path | None = None) -> None:
    """One line naming the ``hco prepare`` command when ``config``'s dataset is not prepared
    yet: the preset's line, or the ``# Prepare:`` line of the config file."""
    path = Path(config.data.path)
    if (path / "dataset.json").is_file():
        return
    line = PREPARE_LINES.get(preset or "") or (prepare_line(config_file) if config_file
                                                else None)
    if line is not None:
        raise ConfigError(f"{path} holds no prepared dataset; make it first with: {line}")
