"""Typed run files: ``run.json`` and the metadata of ``checkpoints/last.pt``.

``last.pt`` stays plain data for ``torch.load(weights_only=True)``; its scalar metadata (where
the run stopped, its learning rate and clock, how many processes wrote it) is validated here on
the way in and out, beside the tensors (weights, optimizer and RNG states) it travels with.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hco_cli.errors import CheckpointError


class BestScore(BaseModel):
    """The best validation score so far and its iteration (None before any validation)."""

    model_config = ConfigDict(extra="forbid")

    score: float | None = None
    iter: int | None = None


class RunInfo(BaseModel):
    """``run.json``: what the run is, where it stands, and how it ended."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    framework: str
    optimizer: str
    seed: int
    fold: str | None
    labeled: int = Field(ge=0)
    unlabeled: int = Field(ge=0)
    iterations: dict[str, int]
    device: str
    processes: int = Field(ge=1)
    select_on: str
    init_from: str | None
    warnings: list[str]
    # Accepted edits of config.yaml at resumes: {"iteration": i, "changes": {key: [old, new]}}.
    config_changes: list[dict[str, Any]] | None = None
    finished: bool
    wall_seconds: float
    hco_version: str
    best: BestScore
    # validation.also_select_on: each split's best of the final phase (best-<split>.pt).
    also_best: dict[str, BestScore] | None = None
    # The prepared dataset's four digests (hco_cli.data.identity); None in runs before them.
    dataset_identity: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The file's content (``config_changes``, ``also_best`` and ``dataset_identity`` only
        once there are some)."""
        unset = {k for k in ("config_changes", "also_best", "dataset_identity")
                 if getattr(self, k) is None}
        return self.model_dump(mode="json", exclude=unset)


class ResumeMeta(BaseModel):
    """The scalar metadata of ``last.pt``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["last"] = "last"
    phase_index: int = Field(ge=0)  # the phase to continue (len(phases) once finished)
    local_iter: int = Field(ge=0)  # iterations done in that phase
    global_iter: int = Field(ge=0)
    lr: float
    elapsed: float = Field(ge=0)  # training seconds so far, over every attempt
    finished: bool
    processes: int = Field(default=1, ge=1)  # data-parallel processes that wrote it
    run_best: BestScore
    also_best: dict[str, BestScore] = Field(default_factory=dict)  # validation.also_select_on
    # The dataset it trains on (hco_cli.data.identity); None in checkpoints before it existed.
    dataset_identity: dict[str, str] | None = None

    @classmethod
    def of(cls, state: dict[str, Any], *, source: str) -> ResumeMeta:
        """Validate the metadata of a loaded ``last.pt``; CheckpointError naming the field."""
        try:
            return cls.model_validate({k: state[k] for k in RESUME_KEYS if k in state})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "metadata"
            raise CheckpointError(f"{source}: {where}: {first['msg']}") from None

    def payload(self) -> dict[str, Any]:
        """The keys written into ``last.pt`` (plain Python values)."""
        return self.model_dump()


RESUME_KEYS: tuple[str, ...] = tuple(ResumeMeta.model_fields)

__all__ = ["RESUME_KEYS", "BestScore", "ResumeMeta", "RunInfo"]
