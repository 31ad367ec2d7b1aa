"""The two-gradient contract as a type: what the SSL frameworks and the loop may ask of an
optimizer. ``TwoSourceOptimizer`` (base.py) implements it; frameworks annotate with it instead
of reaching the methods by duck typing."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from torch import Tensor


class TwoSource(Protocol):
    """An optimizer that steps from the labeled gradient g_L and the unlabeled gradient g_U."""

    param_groups: list[dict[str, Any]]
    # Record diagnostics on the next step (the loop sets it once per logging interval).
    diagnose: bool

    @property
    def hierarchical(self) -> bool:
        """True when g_L and g_U must arrive apart (the ``*-hco`` optimizers)."""
        ...

    @property
    def last_alignment_tensor(self) -> Tensor | None:
        """Admitted fraction of the last step's masked elements (0-d, no sync), or None."""
        ...

    def collecting(self, source: int) -> AbstractContextManager[None]:
        """Gather gradient source ``source`` (0: g_L or g, 1: g_U) computed inside the block."""
        ...

    def step_two_source(self, grads_labeled: Sequence[Tensor | None],
                        grads_unlabeled: Sequence[Tensor | None]) -> None:
        """One step from g_L and g_U, aligned with the parameters in param_groups order."""
        ...

    def take_diagnostics(self) -> dict[str, Tensor] | None:
        """The diagnosed step's values, cleared; None when the last step was not diagnosed."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


__all__ = ["TwoSource"]
