"""TrainConfig validation, presets, sample configs and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hco_cli.config import TrainConfig, validate_config
from hco_cli.data.dataset import Folds, Splits
from hco_cli.errors import ConfigError, DataError
from hco_cli.optim import OPTIMIZER_NAMES
from hco_cli.training.presets import (
    PRESETS,
    Overrides,
    build_config,
    iterations_note,
    load_yaml,
    preset,
    with_iterations,
)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"
SAMPLE_PRESET = {"la_bcp_sgd": "la", "pancreas_bcp_adam": "pancreas",
                 "fetal_cmt_adamw": "fetal", "synthetic_demo": "synthetic"}


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(SAMPLE_PRESET))
def test_every_sample_config_validates_and_equals_its_preset(name):
    path = SAMPLES / f"{name}.yaml"
    config = build_config(config_file=path)
    assert isinstance(config, TrainConfig)
    assert load_yaml(path) == PRESETS[SAMPLE_PRESET[name]]


def test_sample_configs_hold_the_four_studies_and_all_validate():
    stems = {p.stem for p in SAMPLES.glob("*.yaml")}
    assert set(SAMPLE_PRESET) <= stems
    for path in SAMPLES.glob("*.yaml"):  # the short-schedule variants of the evidence runs too
        assert isinstance(build_config(config_file=path), TrainConfig), path.name


def test_la_preset_is_study_1():
    c = build_config(dataset="la", overrides=Overrides(optimizer="sgd-hco"))
    assert (c.framework.name, c.optimizer.name) == ("bcp", "sgd-hco")
    assert c.data.path == Path("data/la") and c.data.labeled == 8
    assert c.data.patch_size == (112, 112, 80)
    assert (c.data.labeled_batch_size, c.data.unlabeled_batch_size) == (4, 4)
    assert c.optimizer.hyperparameters() == {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    assert (c.framework.pretrain_iterations, c.framework.selftrain_iterations) == (2000, 15000)
    assert (c.validation.every, c.validation.split) == (200, "val")


def test_unknown_optimizer_lists_the_choices():
    data = preset("la")
    data["optimizer"]["name"] = "sgd-fancy"
    message = _error(data)
    assert message.startswith("config: optimizer.name: unknown optimizer 'sgd-fancy'")
    assert all(name in message for name in OPTIMIZER_NAMES)


def test_hyperparameter_of_another_family_is_refused():
    message = _error({**preset("la"), "optimizer": {"name": "adam", "momentum": 0.9}})
    assert "optimizer: momentum do(es) not apply to optimizer adam" in message
    assert "betas" in message  # what adam accepts


def test_a_stored_config_can_skip_the_optimizer_trial_but_not_the_names():
    """try_optimizer=False (a run loaded to predict, which builds no optimizer) skips the
    values' trial on a stand-in; unknown names and options of another family still fail."""
    bad_value = {**preset("la"), "optimizer": {"name": "sgd-hco",
                                               "options": {"mask_norm": "bogus"}}}
    with pytest.raises(ConfigError, match="Invalid mask_norm"):
        validate_config(bad_value)
    stored = validate_config(bad_value, try_optimizer=False)
    assert stored.optimizer.options == {"mask_norm": "bogus"}
    wrong_family = {**preset("la"), "optimizer": {"name": "adam", "momentum": 0.9}}
    with pytest.raises(ConfigError, match=r"momentum do\(es\) not apply to optimizer adam"):
        validate_config(wrong_family, try_optimizer=False)


def test_extra_options_pass_only_when_accepted():
    ok = validate_config({**preset("la"), "optimizer": {"name": "sgd-hco",
                                                        "options": {"mask_norm": "mean_eps"}}})
    assert ok.optimizer.hyperparameters() == {"mask_norm": "mean_eps"}
    # Values are checked too, before anything is written.
    bad = _error({**preset("la"), "optimizer": {"name": "sgd-hco",
                                                "options": {"mask_norm": "mean"}}})
    assert bad == ("config: optimizer: Invalid mask_norm: 'mean' (choose one of clamp, "
                   "mean_eps, count_plus_one)")
    message = _error({**preset("la"), "optimizer": {"name": "sgd", "options": {"mask_norm": 1}}})
    assert "mask_norm" in message and "sgd" in message


def test_literal_error_names_field_and_allowed_values():
    data = preset("la")
    data["data"]["augment"] = "elastic"
    assert _error(data) == "config: data.augment: Input should be 'bcp', 'flip' or 'none'"


def test_a_validation_stride_longer_than_the_patch_is_refused():
    """Windows 48 apart on a 32-voxel patch leave 16 voxels between them unpredicted."""
    data = preset("la")
    data["data"]["patch_size"] = [112, 112, 32]
    data["validation"]["stride"] = [18, 18, 32]
    validate_config(data)  # a stride equal to the patch tiles without gaps
    data["validation"]["stride"] = [18, 0, 32]
    assert _error(data) == "config: validation.stride: every stride must be >= 1"
    data["validation"]["stride"] = [18, 18, 48]
    assert _error(data) == ("config: validation.stride 18,18,48 is longer than the patch "
                            "112,112,32 on axis z: the voxels between two windows would get "
                            "no prediction")


def test_unknown_key_lists_the_allowed_keys():
    data = preset("la")
    data["validation"]["evry"] = 3
    message = _error(data)
    assert message.startswith("config: validation.evry: unknown field; allowed: every, split")


def test_a_misspelt_required_key_is_named_not_only_the_missing_one():
    data = preset("la")
    data["data"]["patch_sise"] = data["data"].pop("patch_size")
    message = _error(data)
    assert message.startswith("config: data.patch_sise: unknown field; allowed: ")
    assert "patch_size" in message


def test_unknown_framework_key_follows_the_discriminator():
    data = preset("la")
    data["framework"]["epochs"] = 3
    message = _error(data)
    assert "framework.bcp.epochs: unknown field; allowed: name, pretrain_iterations" in message


def test_unknown_framework_name_lists_the_frameworks():
    data = preset("la")
    data["framework"] = {"name": "fixmatch"}
    message = _error(data)
    assert "framework" in message and "'bcp'" in message and "'cmt'" in message


def test_missing_and_bad_values():
    data = preset("la")
    del data["data"]["patch_size"]
    assert _error(data) == "config: data.patch_size: is required"
    data = preset("la")
    data["data"]["fold"] = "fold1"
    assert "data.fold: must look like L<i>U<j>" in _error(data)


def test_overrides_apply():
    c = build_config(dataset="synthetic", overrides=Overrides(
        optimizer="sgd", labeled=2, seed=5, fold="L0U1", run_dir=Path("r"), data=Path("d"),
        device="cpu", select_on="test", deterministic=True, init_from=Path("other")))
    assert (c.optimizer.name, c.data.labeled, c.seed, c.data.fold) == ("sgd", 2, 5, "L0U1")
    assert (c.run_dir, c.data.path, c.init_from) == (Path("r"), Path("d"), Path("other"))
    assert (c.device, c.validation.select_on, c.deterministic) == ("cpu", "test", True)


def test_fold_none_unsets_the_presets_fold():
    """--fold none trains the fetal recipe on a dataset's own labeled/unlabeled split (one
    prepared without a fold grid); a fold grid's dataset says how to get there."""
    assert build_config(dataset="fetal").data.fold == "L0U0"
    assert build_config(dataset="fetal", overrides=Overrides(fold="none")).data.fold is None
    assert build_config(dataset="fetal", overrides=Overrides(fold="None")).data.fold is None
    with pytest.raises(DataError, match=r"^fold L0U0 does not exist: this dataset was "
                       r"prepared without a fold grid; leave the fold out \(hco train: --fold "
                       r"none, data.fold: null\) for its labeled/unlabeled split, or prepare"):
        Splits(labeled=["a"], unlabeled=["b"]).resolve("L0U0")
    with pytest.raises(DataError, match="fold L1U0 does not exist: this dataset has 1 labeled"):
        Splits(labeled=["a"], folds=Folds(labeled=[["a"]], unlabeled=[["b"]])).resolve("L1U0")


def test_no_flags_turn_off_what_a_config_turns_on(tmp_path):
    """--no-deterministic / --no-sync-batchnorm (False) override a config's true; None (the
    flag not given) keeps it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**preset("synthetic"), "deterministic": True,
                                    "distributed": {"sync_batchnorm": True}}))
    kept = build_config(config_file=path, overrides=Overrides())
    assert kept.deterministic is True and kept.distributed.sync_batchnorm is True
    off = build_config(config_file=path, overrides=Overrides(deterministic=False,
                                                             sync_batchnorm=False))
    assert off.deterministic is False and off.distributed.sync_batchnorm is False


def test_config_file_or_dataset_exactly_once(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of --config FILE or --dataset"):
        build_config()
    with pytest.raises(ConfigError, match="unknown dataset preset 'mars'; choose one of: la"):
        build_config(dataset="mars")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(config_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file=tmp_path / "none.yaml")


def test_iterations_override_per_framework():
    bcp = with_iterations(build_config(dataset="la"), 170)
    assert (bcp.framework.pretrain_iterations, bcp.framework.selftrain_iterations) == (20, 150)
    tiny = with_iterations(build_config(dataset="la"), 1)
    assert (tiny.framework.pretrain_iterations, tiny.framework.selftrain_iterations) == (0, 1)
    cmt = with_iterations(build_config(dataset="fetal"), 100)
    assert cmt.framework.epochs == 3 and cmt.framework.iterations == 117
    assert iterations_note(cmt, 100) == (
        "cmt trains whole epochs of 39 iterations (framework.iterations_per_epoch): "
        "--iterations 100 gives 3 epochs, 117 iterations")
    assert iterations_note(with_iterations(cmt, 20), 20) == (
        "cmt trains whole epochs of 39 iterations (framework.iterations_per_epoch): "
        "--iterations 20 gives 1 epoch, 39 iterations")
    assert iterations_note(with_iterations(cmt, 78), 78) is None
    assert iterations_note(bcp, 170) is None
    data = preset("synthetic")
    data["framework"] = {"name": "mean-teacher"}
    mt = with_iterations(validate_config(data), 7)
    assert mt.framework.iterations == 7
    with pytest.raises(ConfigError):
        with_iterations(bcp, 0)
