"""Helpers shared by the SSL frameworks: random streams, multi-optimizer steps, batch checks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from hco_cli.data.batch import Batch
from hco_cli.errors import ConfigError
from hco_cli.optim.protocol import TwoSource
from hco_cli.ssl.base import alignment_tensor, collecting, needs_split


class FrameworkRng:
    """The framework's own random streams, seeded from the run seed and saved in checkpoints.

    ``cpu`` draws host-side numbers (cube corners, blur sigmas) without touching the device;
    ``device`` draws tensors on the training device (noise) without a host round trip.
    Dropout still uses torch's global generators, which the training loop seeds.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cpu = torch.Generator(device="cpu")
        self.cpu.manual_seed(seed)
        if device.type == "cpu":
            self.device = self.cpu
        else:
            self.device = torch.Generator(device=device)
            self.device.manual_seed(seed + 1)

    def state_dict(self) -> dict[str, Tensor]:
        state = {"cpu": self.cpu.get_state()}
        if self.device is not self.cpu:
            state["device"] = self.device.get_state()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.cpu.set_state(state["cpu"])
        if self.device is not self.cpu and "device" in state:
            self.device.set_state(state["device"])

    def randint(self, high: int) -> int:
        """A uniform integer in [0, high), drawn on the host (no device synchronisation)."""
        return int(torch.randint(0, max(high, 1), (1,), generator=self.cpu))

    def uniform(self, low: float, high: float) -> float:
        """A uniform float in [low, high), drawn on the host."""
        return low + (high - low) * float(torch.rand((), generator=self.cpu, dtype=torch.float64))


def default_seed() -> int:
    """A seed drawn from torch's global CPU generator, which the training loop seeds."""
    return int(torch.randint(0, 2**62, (1,)))


def optimizer_params(optimizer: TwoSource) -> list[Tensor]:
    """The optimizer's parameters in ``param_groups`` order (the order its gradients follow)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def step_many(optimizers: Sequence[TwoSource], loss_l: Tensor,
              loss_u: Tensor | None) -> None:
    """:func:`two_source_step` for several optimizers whose parameters share one graph.

    One backward pass of L_L + L_U when no optimizer is hierarchical (or diagnosed); otherwise
    two (g_L with the graph retained, then g_U), handing g_L + g_U to the other optimizers.
    """
    params = [optimizer_params(opt) for opt in optimizers]
    flat = [p for group in params for p in group]
    has_u = loss_u is not None and loss_u.requires_grad
    if not has_u or not any(needs_split(opt) for opt in optimizers):
        total = loss_l + loss_u if has_u and loss_u is not None else loss_l
        with _collecting(optimizers, source=0):
            grads = _split(torch.autograd.grad(total, flat, allow_unused=True), params)
        for opt, g in zip(optimizers, grads, strict=True):
            opt.step_two_source(g, [None] * len(g))
        return
    assert loss_u is not None
    # Only the hierarchical optimizers collect here: the others step on g_L + g_U, a sum over
    # two backward passes, which their step packs and reduces as before.
    hierarchical = [opt for opt in optimizers if needs_split(opt)]
    with _collecting(hierarchical, source=0):
        grads_l = _split(torch.autograd.grad(loss_l, flat, retain_graph=True,
                                             allow_unused=True), params)
    with _collecting(hierarchical, source=1):
        grads_u = _split(torch.autograd.grad(loss_u, flat, allow_unused=True), params)
    for opt, gl, gu in zip(optimizers, grads_l, grads_u, strict=True):
        if needs_split(opt):
            opt.step_two_source(gl, gu)
        else:
            summed = [_add(a, b) for a, b in zip(gl, gu, strict=True)]
            opt.step_two_source(summed, [None] * len(summed))


@contextmanager
def _collecting(optimizers: Sequence[TwoSource], *, source: int) -> Iterator[None]:
    with ExitStack() as stack:
        for opt in optimizers:
            stack.enter_context(collecting(opt, source=source))
        yield


def _split(grads: Sequence[Tensor | None], params: list[list[Tensor]]) -> list[list[Tensor | None]]:
    out, start = [], 0
    for group in params:
        out.append(list(grads[start:start + len(group)]))
        start += len(group)
    return out


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def mean_alignment(optimizers: Sequence[TwoSource]) -> Tensor | None:
    """Mean admitted fraction over the optimizers that report one (None if none does)."""
    values = [v for v in (alignment_tensor(opt) for opt in optimizers) if v is not None]
    if not values:
        return None
    return torch.stack([v.to(values[0].device, torch.float32) for v in values]).mean()


def get_optimizer(optimizers: Mapping[str, TwoSource], name: str) -> TwoSource:
    """``optimizers[name]`` with an error naming what the framework expected."""
    if name not in optimizers:
        raise ConfigError(
            f"the framework needs an optimizer for {name!r}, got {sorted(optimizers)}")
    return optimizers[name]


def unlabeled_of(batch: Batch, framework: str) -> Tensor:
    """The unlabeled images, which this framework needs in every iteration."""
    if batch.unlabeled_image is None:
        raise ConfigError(f"the {framework} framework needs unlabeled images in every batch")
    return batch.unlabeled_image


def check_even_halves(batch: Batch, framework: str) -> None:
    """BCP's copy-paste pairs the first and second halves of equal-sized batches."""
    b_l = batch.labeled_image.shape[0]
    b_u = None if batch.unlabeled_image is None else batch.unlabeled_image.shape[0]
    if b_l % 2 or (b_u is not None and b_u != b_l):
        raise ConfigError(
            f"the {framework} framework needs an even labeled batch and an unlabeled batch of the "
            f"same size (got {b_l} labeled, {b_u} unlabeled)")


def detached(value: Tensor) -> Tensor:
    """A detached 0-d copy of a loss for :class:`StepResult`."""
    return value.detach().reshape(())


def scalar(value: float, device: torch.device) -> Tensor:
    """A host float as a 0-d device tensor (a fill kernel, no synchronisation)."""
    return torch.full((), value, device=device)


def networks_state(networks: dict[str, nn.Module]) -> dict[str, dict[str, Any]]:
    """``{name: state_dict}`` of every network."""
    return {name: net.state_dict() for name, net in networks.items()}
