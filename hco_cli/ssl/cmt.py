"""CMT / UCMT (Shen et al., IJCAI 2023) as in UCMT's ``train_3d.py`` (fixed at ``ed73de5``).

Two students and a teacher, all in train mode. Each iteration makes two Gaussian-blur strong views
A1, A2 of every labeled and unlabeled image (student 1 sees A1, student 2 sees A2; the teacher
sees the clean images) and takes two optimizer steps:

1. loss_s = mean of the students' Dice on the labeled views; loss_x (cross pseudo supervision) =
   mean of Dice(s1_u, argmax s2_u) and Dice(s2_u, argmax s1_u); loss_u (mean teacher) = mean of
   Dice(s_k_u, argmax teacher_u). L_L = loss_s and L_U = 0.1 lambda loss_x + 0.1 lambda loss_u,
   lambda = sigmoid_rampup(iteration, 5 epochs).
2. UMIX: on the A1 views, blocks are swapped between the students' uncertainty maps (entropy of
   the mean of student and teacher softmax from step 1), for the labeled images with their labels
   and for the unlabeled images with the teacher's pseudo-labels; both students predict the mixed
   images and the same losses are taken against the mixed labels (the fix of UCMT issue #8).

After each step the teacher follows theta_t <- d theta_t + c (1-d) theta_1 + (1-c)(1-d) theta_2,
d = min(1 - 1/(iteration + 1), 0.99), c = 0.99. Per student and step, g_L and g_U come from L_L
and L_U (PROTOCOLS 4). Validation and prediction use the teacher, which UCMT selects and saves.
StepResult reports the step-1 losses, which UCMT logs; the step-2 losses are in ``extra``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hco_cli.data.batch import Batch
from hco_cli.errors import ConfigError
from hco_cli.optim.protocol import TwoSource
from hco_cli.ssl.base import Framework, ModelFactory, Phase, StepResult, alignment_tensor
from hco_cli.ssl.common import (
    FrameworkRng,
    detached,
    get_optimizer,
    networks_state,
    scalar,
    step_many,
    unlabeled_of,
)
from hco_cli.ssl.config import CMTConfig
from hco_cli.ssl.ema import warmup_decay, weighted_ema_update_
from hco_cli.ssl.losses import supervised_loss
from hco_cli.ssl.ramps import sigmoid_rampup
from hco_cli.ssl.umix import check_divisible, mean_entropy, strong_view, umix


def cmt_loss_terms(s1_l: Tensor, s2_l: Tensor, label: Tensor, s1_u: Tensor, s2_u: Tensor,
                   pseudo: Tensor, *, kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """UCMT's (loss_s, loss_x, loss_u) from the students' logits, unweighted (the weight ramps
    up every iteration, so a compiled version of this function takes none)."""
    loss_s = (supervised_loss(s1_l, label, kind=kind)
              + supervised_loss(s2_l, label, kind=kind)) / 2
    cross1, cross2 = s2_u.detach().argmax(dim=1), s1_u.detach().argmax(dim=1)
    loss_x = (supervised_loss(s1_u, cross1, kind=kind)
              + supervised_loss(s2_u, cross2, kind=kind)) / 2
    loss_mt = (supervised_loss(s1_u, pseudo, kind=kind)
               + supervised_loss(s2_u, pseudo, kind=kind)) / 2
    return loss_s, loss_x, loss_mt


def cmt_losses(s1_l: Tensor, s2_l: Tensor, label: Tensor, s1_u: Tensor, s2_u: Tensor,
               pseudo: Tensor, *, weight: float, kind: str,
               terms: Callable[..., tuple[Tensor, Tensor, Tensor]] = cmt_loss_terms,
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L_L, L_U, loss_x, loss_u) from the students' logits; ``weight`` = 0.1 lambda; ``terms``
    computes the unweighted terms (:func:`cmt_loss_terms`, or a compiled version of it).

    L_L + L_U is UCMT's loss_s + loss_x 0.1 lambda + loss_u 0.1 lambda (added in another order).
    """
    loss_s, loss_x, loss_mt = terms(s1_l, s2_l, label, s1_u, s2_u, pseudo, kind=kind)
    return loss_s, loss_x * weight + loss_mt * weight, loss_x, loss_mt


def kaiming_decoder_init_(model: nn.Module) -> None:
    """UCMT's Kaiming-normal (fan_in, ReLU) init of every Conv3d of the decoder ("classifier")."""
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise ConfigError("cmt kaiming_decoder_init needs a network with a 'decoder' module")
    for module in decoder.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")


class CMTFramework(Framework):
    """Two students with their own optimizers and a two-student EMA teacher."""

    name = "cmt"
    loss_functions = ("cmt_loss_terms",)

    def __init__(self, cfg: CMTConfig, *, model_factory: ModelFactory, num_classes: int,
                 device: torch.device, seed: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = device
        nets = [model_factory() for _ in range(3)]  # independent inits, as UCMT
        if cfg.kaiming_decoder_init:
            for net in nets:
                kaiming_decoder_init_(net)
        self.student1, self.student2, self.teacher = (net.to(device) for net in nets)
        self.teacher.requires_grad_(False)
        self.rng = FrameworkRng(seed, device)
        self.cmt_loss_terms = cmt_loss_terms

    def phases(self) -> list[Phase]:
        return [Phase("train", self.cfg.iterations, needs_unlabeled=True)]

    def trainable(self) -> dict[str, nn.Module]:
        return {"student1": self.student1, "student2": self.student2}

    def rampup(self, iteration: int) -> float:
        """lambda = sigmoid_rampup(iteration, rampup_epochs x iterations_per_epoch)."""
        return sigmoid_rampup(iteration, self.cfg.rampup_epochs * self.cfg.iterations_per_epoch)

    def _view(self, images: Tensor) -> Tensor:
        return strong_view(images, self.rng, p=self.cfg.blur_p, sigma_min=self.cfg.blur_sigma_min,
                           sigma_max=self.cfg.blur_sigma_max)

    def train_step(self, phase: Phase, batch: Batch,
                   optimizers: Mapping[str, TwoSource], iteration: int) -> StepResult:
        opts = [get_optimizer(optimizers, "student1"), get_optimizer(optimizers, "student2")]
        unlabeled = unlabeled_of(batch, self.name)
        shape = tuple(batch.labeled_image.shape[2:])
        if self.cfg.umix and not check_divisible(shape, self.cfg.blocks_per_axis):
            raise ConfigError(f"cmt umix needs patch sizes divisible by {self.cfg.blocks_per_axis}"
                              f" (blocks_per_axis; got {shape})")
        for net in (self.student1, self.student2, self.teacher):
            net.train()
        weight = self.cfg.unsup_weight * self.rampup(iteration)
        images = batch.labeled_image
        l1, l2, u1, u2 = (self._view(x) for x in (images, images, unlabeled, unlabeled))
        s1_l, s2_l, s1_u, s2_u = (self.student1(l1), self.student2(l2),
                                  self.student1(u1), self.student2(u2))
        with torch.no_grad():
            t_l = torch.softmax(self.teacher(images).float(), dim=1)
            t_u = torch.softmax(self.teacher(unlabeled).float(), dim=1)
            pseudo = t_u.argmax(dim=1)
        loss_l, loss_u, loss_x, loss_mt = cmt_losses(s1_l, s2_l, batch.labeled_label, s1_u, s2_u,
                                                     pseudo, weight=weight, kind=self.cfg.loss,
                                                     terms=self.cmt_loss_terms)
        admitted = self._step(opts, loss_l, loss_u, iteration)
        extra = {"loss_x": detached(loss_x), "loss_mt": detached(loss_mt),
                 "lambda": scalar(self.rampup(iteration), loss_l.device)}
        if self.cfg.umix:
            with torch.no_grad():
                mixed = self._umix_inputs(batch, l1, u1, pseudo, (s1_l, s2_l, t_l),
                                          (s1_u, s2_u, t_u))
            image_m, label_m, uimage_m, pseudo_m = mixed
            l2_loss, u2_loss, _, _ = cmt_losses(
                self.student1(image_m), self.student2(image_m), label_m,
                self.student1(uimage_m), self.student2(uimage_m), pseudo_m,
                weight=weight, kind=self.cfg.loss, terms=self.cmt_loss_terms)
            admitted += self._step(opts, l2_loss, u2_loss, iteration)
            extra.update(loss_l_umix=detached(l2_loss), loss_u_umix=detached(u2_loss))
        mean_admitted = torch.stack(admitted).mean() if admitted else None
        return StepResult(loss_l=detached(loss_l), loss_u=detached(loss_u),
                          admitted=mean_admitted, extra=extra)

    def _step(self, opts: list[TwoSource], loss_l: Tensor, loss_u: Tensor,
              iteration: int) -> list[Tensor]:
        """Both students' steps from one pair of losses, then the teacher update."""
        step_many(opts, loss_l, loss_u)
        weighted_ema_update_(self.teacher, self.student1, self.student2,
                             decay=warmup_decay(iteration, self.cfg.ema_decay),
                             coefficient=self.cfg.teacher_coefficient)
        return [a.float() for a in (alignment_tensor(opt) for opt in opts) if a is not None]

    def _umix_inputs(self, batch: Batch, l1: Tensor, u1: Tensor, pseudo: Tensor,
                     labeled: tuple[Tensor, Tensor, Tensor],
                     unlabeled: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, ...]:
        """UMIX-ed (labeled image, label, unlabeled image, pseudo-label) from step-1 outputs."""
        n, k = self.cfg.blocks_per_axis, self.cfg.topk
        s1, s2, t = labeled
        unc1 = mean_entropy(torch.softmax(s1.detach().float(), dim=1), t)
        unc2 = mean_entropy(torch.softmax(s2.detach().float(), dim=1), t)
        image_m, label_m = umix([l1, batch.labeled_label.unsqueeze(1)], unc1, unc2,
                                topk=k, blocks_per_axis=n)
        s1, s2, t = unlabeled
        unc1 = mean_entropy(torch.softmax(s1.detach().float(), dim=1), t)
        unc2 = mean_entropy(torch.softmax(s2.detach().float(), dim=1), t)
        uimage_m, pseudo_m = umix([u1, pseudo.unsqueeze(1)], unc1, unc2, topk=k, blocks_per_axis=n)
        return image_m, label_m.squeeze(1), uimage_m, pseudo_m.squeeze(1)

    def eval_model(self) -> nn.Module:
        return self.teacher

    def state_dict(self) -> dict[str, Any]:
        nets = {"student1": self.student1, "student2": self.student2, "teacher": self.teacher}
        return {"networks": networks_state(nets), "rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in (("student1", self.student1), ("student2", self.student2),
                          ("teacher", self.teacher)):
            net.load_state_dict(state["networks"][name])
        self.rng.load_state_dict(state["rng"])
