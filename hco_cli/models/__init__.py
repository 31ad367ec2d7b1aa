"""Segmentation networks: ``ModelConfig`` here (torch-free), ``vnet.build_model`` builds one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hco_cli.models.layout import (
    DEFAULT_KERNELS,
    DEFAULT_STRIDES,
    GROUPNORM_GROUPS,
    STAGES,
    Triple,
    size_multiples,
)


class ModelConfig(BaseModel):
    """The network of a run. Defaults are BCP's LA V-Net (BatchNorm, Dropout3d(0.5)).

    BCP's Pancreas network is ``normalization="instancenorm", dropout=False``; UCMT's is
    ``dropout=False`` with BatchNorm. ``strides`` (4 down-samplings, 1 or 2 per axis) and
    ``kernels`` (5 scales, 1 or 3 per axis) come from a plan (``hco plan``) for anisotropic
    data; unset, the network is today's V-Net exactly.
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["vnet"] = "vnet"
    n_filters: int = Field(default=16, ge=1)
    normalization: Literal["batchnorm", "instancenorm", "groupnorm", "none"] = "batchnorm"
    dropout: bool = True
    dropout_p: float = Field(default=0.5, gt=0.0, lt=1.0)
    strides: list[Triple] | None = Field(default=None, description="per down-sampling, per axis")
    kernels: list[Triple] | None = Field(default=None, description="per scale, per axis")

    @model_validator(mode="after")
    def _groupnorm_divides(self) -> ModelConfig:
        if self.normalization == "groupnorm" and self.n_filters % GROUPNORM_GROUPS:
            raise ValueError(
                f"normalization 'groupnorm' uses {GROUPNORM_GROUPS} groups: n_filters must be a "
                f"multiple of {GROUPNORM_GROUPS} (got {self.n_filters})")
        return self

    @model_validator(mode="after")
    def _layout(self) -> ModelConfig:
        for key, rows, count, allowed in (("strides", self.strides, STAGES - 1, {1, 2}),
                                          ("kernels", self.kernels, STAGES, {1, 3})):
            if rows is None:
                continue
            if len(rows) != count:
                raise ValueError(f"{key}: expected {count} [x, y, z] entries, got {len(rows)}")
            bad = next((v for row in rows for v in row if v not in allowed), None)
            if bad is not None:
                raise ValueError(f"{key}: {bad} is not one of {sorted(allowed)}")
        return self

    @property
    def size_multiples(self) -> Triple:
        """Per axis, what every patch size must be a multiple of (16 by default)."""
        return size_multiples(self.strides)

    @property
    def is_default_layout(self) -> bool:
        """True when the network is today's V-Net (isotropic 3x3x3 kernels, 2x2x2 strides)."""
        return (tuple(self.strides or DEFAULT_STRIDES) == DEFAULT_STRIDES
                and tuple(self.kernels or DEFAULT_KERNELS) == DEFAULT_KERNELS)


__all__ = ["DEFAULT_KERNELS", "DEFAULT_STRIDES", "ModelConfig", "size_multiples"]
