"""Configuration of the SSL frameworks: one pydantic model per framework, chosen by ``name``.

Defaults are those of the reference code (PROTOCOLS.md): BCP's ``LA_BCP_train.py``, UCMT's
``train_3d.py`` with the HCO paper's 200 epochs, and SSL4MIS's ``train_mean_teacher_3D.py`` /
``train_fully_supervised_3D.py``. Iteration counts live here; the training loop reads them from
the framework's phases.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SupervisedLoss = Literal["ce_dice", "dice"]
LrSchedule = Literal["poly", "constant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Whether the framework has a pre-training phase whose checkpoint other runs can share.
    shares_pretraining: ClassVar[bool] = False


class SupervisedConfig(_Strict):
    """Labeled data only (SSL4MIS fully supervised 3D: 30k iterations, poly LR)."""

    name: Literal["supervised"] = "supervised"
    iterations: int = Field(default=30000, ge=1)
    loss: SupervisedLoss = "ce_dice"
    lr_schedule: LrSchedule = "poly"
    poly_power: float = Field(default=0.9, gt=0)


class MeanTeacherConfig(_Strict):
    """SSL4MIS mean teacher: MSE of softmaxes, weight 0.1 x sigmoid ramp over iteration // 150."""

    name: Literal["mean-teacher"] = "mean-teacher"
    iterations: int = Field(default=30000, ge=1)
    loss: SupervisedLoss = "ce_dice"
    lr_schedule: LrSchedule = "poly"
    poly_power: float = Field(default=0.9, gt=0)
    ema_decay: float = Field(default=0.99, ge=0, le=1)
    consistency: float = Field(default=0.1, ge=0)
    # The ramp runs over ``rampup_length`` units of ``iteration // rampup_every`` (200 x 150).
    rampup_length: float = Field(default=200.0, ge=0)
    rampup_every: int = Field(default=150, ge=1)
    # Teacher input noise: clamp(N(0, std^2), -clip, clip).
    noise_std: float = Field(default=0.1, ge=0)
    noise_clip: float = Field(default=0.2, ge=0)


class BCPConfig(_Strict):
    """Bidirectional copy-paste (BCP, LA): 2k pre-training + 15k self-training iterations."""

    # Its pre-training phase ends in a checkpoint other runs can start from (hco sweep
    # --share-pretraining); the other frameworks have none.
    shares_pretraining: ClassVar[bool] = True

    name: Literal["bcp"] = "bcp"
    pretrain_iterations: int = Field(default=2000, ge=0)
    selftrain_iterations: int = Field(default=15000, ge=1)
    ema_decay: float = Field(default=0.99, ge=0, le=1)
    # Cube side as a fraction of the patch, per axis when given as [x, y, z].
    mask_ratio: float | tuple[float, float, float] = 2 / 3
    u_weight: float = Field(default=0.5, ge=0)
    lr_decay: float = Field(default=0.1, gt=0, le=1)
    lr_decay_every: int = Field(default=2500, ge=1)
    # source: L_L = BCP's loss_l, L_U = loss_u; region: L_L = ground-truth regions of both mixed
    # outputs, L_U = pseudo-label regions (PROTOCOLS 4).
    grad_split: Literal["source", "region"] = "source"
    pseudo_lcc: bool = True
    lcc_connectivity: Literal[6, 18, 26] = 26
    # BCP-Pancreas restores the pre-training optimizer state (saved with the best pre-trained
    # weights) for self-training; BCP-LA re-creates the optimizer (False).
    restore_optimizer: bool = False
    # The teacher's forward passes over the two unlabeled halves: "separate" (BCP: one per
    # half; in train mode BatchNorm takes each half's statistics), "auto" (one batched pass
    # where that changes nothing: no BatchNorm and no active dropout in the teacher, e.g.
    # BCP's Pancreas V-Net), "batched" (always one pass: with BatchNorm the statistics of both
    # halves together, which BCP does not do; for speed measurements).
    teacher_forward: Literal["separate", "auto", "batched"] = "auto"


    @model_validator(mode="after")
    def _ratio(self) -> BCPConfig:
        ratios = self.mask_ratio if isinstance(self.mask_ratio, tuple) else (self.mask_ratio,)
        if not all(0 < r <= 1 for r in ratios):
            raise ValueError("mask_ratio must be in (0, 1] on every axis")
        return self


class CMTConfig(_Strict):
    """UCMT: two students, a weighted EMA teacher, CPS + MT terms and the UMIX second step."""

    name: Literal["cmt"] = "cmt"
    epochs: int = Field(default=200, ge=1)
    # UCMT's epoch is one pass of a labeled loader padded to the whole training set:
    # ceil(number of training cases / batch size), 80 / 4 = 20 on LA.
    iterations_per_epoch: int = Field(default=20, ge=1)
    rampup_epochs: float = Field(default=5.0, ge=0)
    unsup_weight: float = Field(default=0.1, ge=0)
    loss: SupervisedLoss = "dice"
    ema_decay: float = Field(default=0.99, ge=0, le=1)
    teacher_coefficient: float = Field(default=0.99, ge=0, le=1)
    umix: bool = True
    topk: int = Field(default=2, ge=1)
    # UCMT's 8 x 8 x 8 UMIX blocks; [x, y, z] for anisotropic patches (hco plan chooses them).
    blocks_per_axis: int | tuple[int, int, int] = 8
    blur_p: float = Field(default=0.8, ge=0, le=1)
    blur_sigma_min: float = Field(default=0.1, gt=0)
    blur_sigma_max: float = Field(default=2.0, gt=0)
    kaiming_decoder_init: bool = True

    @model_validator(mode="after")
    def _check(self) -> CMTConfig:
        if self.blur_sigma_max < self.blur_sigma_min:
            raise ValueError("blur_sigma_max must be >= blur_sigma_min")
        blocks = self.blocks_per_axis
        per_axis = (blocks,) * 3 if isinstance(blocks, int) else blocks
        if min(per_axis) < 1:
            raise ValueError("blocks_per_axis must be >= 1 on every axis")
        if self.topk * 2 > per_axis[0] * per_axis[1] * per_axis[2]:
            raise ValueError("topk is larger than half the number of UMIX blocks")
        return self

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch


FrameworkConfig = Annotated[
    SupervisedConfig | MeanTeacherConfig | BCPConfig | CMTConfig,
    Field(discriminator="name"),
]
