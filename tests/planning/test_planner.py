"""``plan_dataset`` on a synthetic thick-slice dataset and on the paper's LA and fetal data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.fingerprint import FINGERPRINT_FILE, load_fingerprint, read_fingerprint
from hco_cli.data.plan import NetworkPlan, read_plan
from hco_cli.errors import ConfigError
from hco_cli.models import DEFAULT_KERNELS, DEFAULT_STRIDES, ModelConfig
from hco_cli.models.vnet import build_model
from hco_cli.planning.memory import GIB
from hco_cli.planning.planner import PlanOptions, plan_dataset, save_network_plan
from tests.planning import anisotropic


def _runs_forward_and_backward(plan: NetworkPlan, classes: int) -> None:
    """The planned layout on its patch (width 4 on CPU: shapes do not depend on width)."""
    cfg = ModelConfig(n_filters=4, strides=plan.strides, kernels=plan.kernels)
    model = build_model(cfg, in_channels=1, num_classes=classes)
    x = torch.randn(1, 1, *plan.patch_size)
    out = model(x)
    assert out.shape == (1, classes, *plan.patch_size)
    out.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_thick_slices_keep_their_slices_and_pool_z_late(aniso_data: Path) -> None:
    result = plan_dataset(aniso_data)
    plan = result.network
    assert plan.framework == "bcp" and plan.preset is None
    assert plan.target_spacing == pytest.approx(anisotropic.SPACING)
    assert plan.median_shape[2] == anisotropic.SLICES
    assert plan.patch_size[2] == anisotropic.SLICES  # all 12 slices, no padding beyond them
    z_pools = [s[2] for s in plan.strides]
    assert z_pools == [1, 1, 2, 2] and all(s[:2] == (2, 2) for s in plan.strides)
    assert [k[2] for k in plan.kernels] == [1, 1, 3, 3, 3]
    assert plan.patch_size[:2] == (64, 64) and plan.umix_blocks == (8, 8, 6)
    assert plan.memory_estimate_bytes <= plan.memory_target_bytes
    assert result.notes == []
    _runs_forward_and_backward(plan, classes=2)


def test_smaller_memory_target_shrinks_the_patch_not_the_slices(aniso_data: Path) -> None:
    small = plan_dataset(aniso_data, PlanOptions(gpu_memory_gb=0.25)).network
    assert small.patch_size == (48, 64, 12)  # x (longest in mm after z, which is whole) first
    assert small.memory_estimate_bytes <= 0.25 * GIB
    _runs_forward_and_backward(small, classes=2)
    with pytest.raises(ConfigError, match="no patch fits the memory target"):
        plan_dataset(aniso_data, PlanOptions(gpu_memory_gb=0.01))


def test_batches_are_halved_when_the_patch_would_be_tiny(aniso_data: Path) -> None:
    roomy = plan_dataset(aniso_data, PlanOptions(framework="cmt")).network
    tight = plan_dataset(aniso_data, PlanOptions(framework="cmt", gpu_memory_gb=0.25)).network
    assert (roomy.labeled_batch_size, roomy.unlabeled_batch_size) == (2, 2)
    assert (tight.labeled_batch_size, tight.unlabeled_batch_size) == (1, 1)
    assert tight.memory_estimate_bytes <= 0.25 * GIB
    pinned = plan_dataset(aniso_data, PlanOptions(framework="cmt", gpu_memory_gb=0.25,
                                                  labeled_batch_size=2)).network
    assert pinned.labeled_batch_size == 2  # a batch size asked for is kept
    assert math.prod(pinned.patch_size) < math.prod(tight.patch_size)


def test_cmt_plan_and_bad_options(aniso_data: Path) -> None:
    cmt = plan_dataset(aniso_data, PlanOptions(framework="cmt")).network
    assert cmt.framework == "cmt" and cmt.memory_estimate_bytes <= cmt.memory_target_bytes
    with pytest.raises(ConfigError, match="unknown plan preset 'lung'"):
        plan_dataset(aniso_data, PlanOptions(preset="lung"))
    with pytest.raises(ConfigError, match=r"preset fetal is defined at 1\.2 x 1\.2 x 1\.2 mm"):
        plan_dataset(aniso_data, PlanOptions(preset="fetal"))
    with pytest.raises(ConfigError, match="bcp pairs batch halves"):
        plan_dataset(aniso_data, PlanOptions(labeled_batch_size=3))


def test_fingerprint_is_written_at_prepare(aniso_data: Path) -> None:
    fingerprint = read_fingerprint(aniso_data / FINGERPRINT_FILE)
    assert len(fingerprint.cases) == 8
    case = fingerprint.cases[0]
    assert case.original_spacing == pytest.approx(anisotropic.SPACING)
    assert case.shape[2] == anisotropic.SLICES and case.has_label
    assert case.class_voxels[1] > 0 and case.foreground is not None
    # The organ is brighter than the body: its z-scored foreground mean is positive.
    assert case.foreground[0].mean > 0.5 and fingerprint.foreground is not None
    fractions = fingerprint.class_fractions(2)
    assert sum(fractions) == pytest.approx(1.0) and 0 < fractions[1] < 0.5


def test_datasets_without_a_fingerprint_get_one_computed(aniso_data: Path,
                                                         tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(aniso_data, old)
    (old / FINGERPRINT_FILE).unlink()
    dataset = PreparedDataset(old)
    assert load_fingerprint(dataset) == read_fingerprint(aniso_data)
    assert plan_dataset(old).network == plan_dataset(aniso_data).network


def test_native_spacings_that_differ_are_noted(tmp_path: Path) -> None:
    raw = anisotropic.write_scans(tmp_path / "raw", cases=6)
    first = raw / "images" / "case00.nii.gz"
    for folder in ("images", "labels"):
        path = raw / folder / first.name
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([0.8, 0.8, 8.0, 1.0])),
                 str(path))
    anisotropic.prepare(raw, tmp_path / "data", test=1)
    notes = plan_dataset(tmp_path / "data").notes
    assert any("native spacing" in note and "--spacing" in note for note in notes)


def test_plan_is_saved_into_plans_json(aniso_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(aniso_data, copy)
    plan = plan_dataset(copy).network
    save_network_plan(copy, plan)
    stored = read_plan(copy)
    assert stored.network == plan and stored.preprocess == read_plan(aniso_data).preprocess


@pytest.mark.parametrize("preset", ["auto", "none"])
def test_la_plan_is_todays_config(la_prepared: Path, preset: str) -> None:
    """With or without the LA preset, BCP on LA plans 112 x 112 x 80, 4 + 4, today's V-Net."""
    plan = plan_dataset(la_prepared, PlanOptions(preset=preset)).network
    assert plan.preset == ("la" if preset == "auto" else None)
    assert plan.patch_size == (112, 112, 80)
    assert (plan.labeled_batch_size, plan.unlabeled_batch_size) == (4, 4)
    assert tuple(plan.strides) == DEFAULT_STRIDES and tuple(plan.kernels) == DEFAULT_KERNELS
    assert plan.target_spacing == plan.spacing == (0.625, 0.625, 0.625)
    _runs_forward_and_backward(plan, classes=2)


def test_fetal_plan_is_todays_config(fetal_prepared: Path) -> None:
    """The fetal atlas at 1.2 mm: the short CMT study's 64 x 64 x 48 at 2 + 2 (preset fetal);
    the rule alone gives isotropic pooling too, and a BCP plan that fits the median case."""
    plan = plan_dataset(fetal_prepared, PlanOptions(preset="fetal")).network
    assert (plan.framework, plan.patch_size) == ("cmt", (64, 64, 48))
    assert (plan.labeled_batch_size, plan.unlabeled_batch_size) == (2, 2)
    assert tuple(plan.strides) == DEFAULT_STRIDES and tuple(plan.kernels) == DEFAULT_KERNELS
    _runs_forward_and_backward(plan, classes=9)
    bcp = plan_dataset(fetal_prepared).network
    assert tuple(bcp.strides) == DEFAULT_STRIDES and bcp.preset is None
    assert all(p <= m for p, m in zip(bcp.patch_size, bcp.median_shape, strict=True))
    _runs_forward_and_backward(bcp, classes=9)
