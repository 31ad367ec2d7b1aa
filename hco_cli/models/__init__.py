"""Segmentation networks and their configuration (``ModelConfig`` -> ``build_model``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from hco_cli.models.vnet import GROUPNORM_GROUPS, VNet


class ModelConfig(BaseModel):
    """The network of a run. Defaults are BCP's LA V-Net (BatchNorm, Dropout3d(0.5)).

    BCP's Pancreas network is ``normalization="instancenorm", dropout=False``; UCMT's is
    ``dropout=False`` with BatchNorm.
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["vnet"] = "vnet"
    n_filters: int = Field(default=16, ge=1)
    normalization: Literal["batchnorm", "instancenorm", "groupnorm", "none"] = "batchnorm"
    dropout: bool = True
    dropout_p: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _groupnorm_divides(self) -> ModelConfig:
        if self.normalization == "groupnorm" and self.n_filters % GROUPNORM_GROUPS:
            raise ValueError(
                f"normalization 'groupnorm' uses {GROUPNORM_GROUPS} groups: n_filters must be a "
                f"multiple of {GROUPNORM_GROUPS} (got {self.n_filters})")
        return self


def build_model(cfg: ModelConfig, *, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialised network (PyTorch default initialisation, as BCP)."""
    return VNet(in_channels=in_channels, num_classes=num_classes, n_filters=cfg.n_filters,
                normalization=cfg.normalization, dropout_p=cfg.dropout_p if cfg.dropout else 0.0)


__all__ = ["ModelConfig", "VNet", "build_model"]
