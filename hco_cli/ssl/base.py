"""The small interface every SSL framework offers to the one shared training loop.

A framework owns its networks (students, teachers), computes a labeled loss L_L and an
unlabeled loss L_U each iteration, turns them into the two gradients g_L and g_U, and calls
``step_two_source`` on its optimizer(s). The loop owns everything else: data, phases, learning
rates, logging, validation, checkpoints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hco_cli.data.batch import Batch
from hco_cli.models.compiling import compiled_function
from hco_cli.optim.protocol import TwoSource


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one optimizer set-up (e.g. BCP's pre- and self-training)."""

    name: str  # "train", "pretrain" or "selftrain"
    iterations: int
    needs_unlabeled: bool
    # Use the plain member of the optimizer's family (BCP pre-training has no unlabeled gradient).
    plain_optimizer: bool = False
    # Multiplier of the base learning rate at 0-based iteration i of this phase.
    lr_factor: Callable[[int], float] = field(default=lambda i: 1.0)
    # At the end of the phase, load the best validated weights before the next phase starts.
    restore_best: bool = False
    # Start from the optimizer state the previous phase ended with (with restore_best: the
    # state saved with the best weights), instead of fresh optimizers (BCP-Pancreas).
    carry_optimizer: bool = False
    # The phase ends in a checkpoint other runs may start from (RUN/checkpoints/pretrain.pt,
    # --init-from), which then skip it: BCP's pre-training.
    produces_shareable_checkpoint: bool = False


@dataclass
class StepResult:
    """Detached 0-d tensors, so that an iteration needs no host synchronisation."""

    loss_l: Tensor
    loss_u: Tensor
    admitted: Tensor | None = None  # fraction admitted by the CO/HCO mask, if any
    extra: dict[str, Tensor] = field(default_factory=dict)


ModelFactory = Callable[[], nn.Module]


class Framework(ABC):
    """Base class of ``supervised``, ``mean-teacher``, ``bcp`` and ``cmt``."""

    name: str = ""
    #: Attributes holding the framework's loss functions (plain functions of tensors, set in
    #: ``__init__``), which :meth:`compile_losses` replaces by compiled ones.
    loss_functions: ClassVar[tuple[str, ...]] = ()

    def compile_losses(self) -> None:
        """Run the framework's loss functions through ``torch.compile`` (the training config's
        ``compile_losses``): the softmax, one-hot, masks and reductions of a loss, and their
        backward, become a few fused kernels instead of about 150 launches per BCP mixed
        loss. The values are the eager ones up to rounding (reductions in another order)."""
        for attribute in self.loss_functions:
            setattr(self, attribute, compiled_function(getattr(self, attribute)))

    @abstractmethod
    def phases(self) -> list[Phase]:
        """The phases to run, in order."""

    @abstractmethod
    def trainable(self) -> dict[str, nn.Module]:
        """Modules that each get their own optimizer, e.g. ``{"student": net}``."""

    def start_phase(self, phase: Phase) -> None:  # noqa: B027 - optional hook
        """Called before the first iteration of ``phase`` (e.g. BCP builds its teacher here)."""

    @abstractmethod
    def train_step(
        self,
        phase: Phase,
        batch: Batch,
        optimizers: Mapping[str, TwoSource],
        iteration: int,
    ) -> StepResult:
        """One iteration: losses, gradients, ``step_two_source`` on every optimizer, EMA updates."""

    @abstractmethod
    def eval_model(self) -> nn.Module:
        """The network that validation and prediction use."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Every network's weights and buffers (teachers included), as plain tensors."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""


def is_hierarchical(optimizer: TwoSource) -> bool:
    """True for the ``*-hco`` optimizers, which treat g_L and g_U differently."""
    return optimizer.hierarchical


def needs_split(optimizer: TwoSource) -> bool:
    """True when the optimizer must get g_L and g_U apart this step: hierarchical ones always,
    the others on a step whose diagnostics (cos(g_L, g_U)) were asked for."""
    return optimizer.hierarchical or optimizer.diagnose


def alignment_tensor(optimizer: TwoSource) -> Tensor | None:
    """The admitted fraction of the optimizer's last masked step, as a 0-d tensor (no sync)."""
    return optimizer.last_alignment_tensor


def two_source_step(
    optimizer: TwoSource,
    params: Sequence[Tensor],
    loss_l: Tensor,
    loss_u: Tensor | None,
) -> None:
    """Compute g_L and g_U and step.

    Only hierarchical optimizers need the two gradients apart. For the others (plain and CO,
    which use g = g_L + g_U) one backward pass of L_L + L_U gives the same step, so it is used:
    the plain arms then train exactly like the reference code and pay for no extra backward,
    except on a diagnosed step, where they too get the two gradients (and add them).
    """
    params = list(params)
    has_u = loss_u is not None and loss_u.requires_grad
    if not needs_split(optimizer) or not has_u:
        total = loss_l + loss_u if has_u and loss_u is not None else loss_l
        with collecting(optimizer, source=0):
            grads = torch.autograd.grad(total, params, allow_unused=True)
        optimizer.step_two_source(list(grads), [None] * len(params))
        return
    assert loss_u is not None
    with collecting(optimizer, source=0):
        grads_l = torch.autograd.grad(loss_l, params, retain_graph=True, allow_unused=True)
    with collecting(optimizer, source=1):
        grads_u = torch.autograd.grad(loss_u, params, allow_unused=True)
    optimizer.step_two_source(list(grads_l), list(grads_u))


def collecting(optimizer: TwoSource, *, source: int) -> AbstractContextManager[None]:
    """``optimizer.collecting(source=...)``: under data parallelism a flat optimizer all-reduces
    the gradient source computed inside the block during the backward pass; otherwise a no-op."""
    return optimizer.collecting(source=source)
