"""How much GPU memory one training iteration needs: the planner's memory model.

Peak memory = parameters (every network of the framework) + gradients + optimizer state +
the tensors autograd saves for the backward pass + transients + the GPU-resident dataset.

Saved tensors per sample, counted on the V-Net's layout (calibrated on CPU with
``torch.autograd.graph.saved_tensors_hooks``, parameters excluded; exact to within the few
kilobytes of BatchNorm statistics, see ``tests/planning/test_memory.py``):

- each conv + norm + ReLU unit of C channels on V voxels keeps 2 C V elements (the norm's
  input, and the in-place ReLU's output, which is also the next conv's input); resampling
  convolutions count as units at their output scale;
- each additive skip keeps its sum (C V), the input keeps in_channels V;
- with dropout, the two Dropout3d outputs (bottleneck and finest scale) are kept too.

Elements are 2 bytes under bf16 autocast (``amp``) and 4 otherwise. The loss keeps
:data:`LOSS_TENSORS` fp32 maps of K x V (softmax, log-softmax, one-hot, masks). The backward
pass adds gradients of activations while it frees saved ones: :data:`TRANSIENT_MAPS` maps of
the finest scale (C0 V0, fp32) per sample cover it; :data:`WORKSPACE_FRACTION` covers cuDNN
workspaces and allocator rounding. These last three constants are not measurable on CPU: the
benchmark ``benchmarks/plan_memory.py`` reports estimate against
``torch.cuda.max_memory_allocated`` so they can be checked on the GPU machine.

How many samples keep their graph at once (one graph per sample and forward):
supervised ``b_l``; mean teacher ``b_l + b_u`` (the teacher runs without a graph); BCP
``b_l`` (two mixed batches of ``b_l / 2``; pre-training keeps fewer); CMT ``2 (b_l + b_u)``
(both students on both streams; its UMIX step starts after the first backward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hco_cli.models.layout import DECODER_CONVS, ENCODER_CONVS, STAGES

Triple = tuple[int, int, int]
LOSS_TENSORS = 6
TRANSIENT_MAPS = 3
WORKSPACE_FRACTION = 0.10
GIB = 2**30
# Networks held in memory, networks trained and sample graphs kept per framework.
NETWORKS = {"supervised": 1, "mean-teacher": 2, "bcp": 2, "cmt": 3}
TRAINED = {"supervised": 1, "mean-teacher": 1, "bcp": 1, "cmt": 2}
OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2}
FRAMEWORKS = tuple(NETWORKS)


@dataclass(frozen=True)
class NetworkShape:
    """What the memory model needs to know about a V-Net."""

    patch: Triple
    strides: Sequence[Triple]
    n_filters: int = 16
    in_channels: int = 1
    num_classes: int = 2
    dropout: bool = True


def scale_voxels(patch: Triple, strides: Sequence[Triple]) -> list[int]:
    """Voxels per sample at each of the five scales (finest first)."""
    sizes = [tuple(patch)]
    for stride in strides:
        sizes.append(tuple(s // t for s, t in zip(sizes[-1], stride, strict=True)))
    return [math.prod(s) for s in sizes]


def saved_elements(net: NetworkShape) -> int:
    """Elements autograd keeps for one sample's backward pass (parameters excluded)."""
    vox = scale_voxels(net.patch, net.strides)
    channels = [net.n_filters * 2**i for i in range(STAGES)]
    units = sum(n * c * v for n, c, v in zip(ENCODER_CONVS, channels, vox, strict=True))
    units += sum(c * v for c, v in zip(channels[1:], vox[1:], strict=True))  # down-sampling
    units += sum((1 + n) * c * v for n, c, v in zip(DECODER_CONVS, channels, vox, strict=False))
    skips = sum(c * v for c, v in zip(channels[:-1], vox[:-1], strict=True))
    dropout = channels[0] * vox[0] + channels[-1] * vox[-1] if net.dropout else 0
    return 2 * units + skips + net.in_channels * vox[0] + dropout


def parameter_count(n_filters: int, *, in_channels: int = 1, num_classes: int = 2,
                    kernels: Sequence[Triple] | None = None,
                    strides: Sequence[Triple] | None = None) -> int:
    """Parameters of the V-Net with BatchNorm (the layout's kernels and strides)."""
    kernels = kernels or [(3, 3, 3)] * STAGES
    strides = strides or [(2, 2, 2)] * (STAGES - 1)
    channels = [n_filters * 2**i for i in range(STAGES)]

    def block(convs: int, c_in: int, c: int, kernel: Triple) -> int:
        k = math.prod(kernel)
        return sum(k * (c_in if i == 0 else c) * c + 3 * c for i in range(convs))

    total = block(ENCODER_CONVS[0], in_channels, channels[0], kernels[0])
    total += sum(block(n, c, c, k) for n, c, k in
                 zip(ENCODER_CONVS[1:], channels[1:], kernels[1:], strict=True))
    total += sum(block(n, c, c, k) for n, c, k in
                 zip(DECODER_CONVS, channels, kernels, strict=False))
    for c_lo, c_hi, stride in zip(channels[:-1], channels[1:], strides, strict=True):
        # down (c_lo -> c_hi) and up (c_hi -> c_lo), kernel = stride, each + bias + norm
        total += 2 * math.prod(stride) * c_lo * c_hi + 3 * (c_lo + c_hi)
    return total + channels[0] * num_classes + num_classes


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training iteration at its peak, by kind."""

    parameters: int  # count, per network
    weights: int
    gradients: int
    optimizer: int
    activations: int
    transients: int
    dataset: int
    workspace: int

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.transients + self.dataset + self.workspace)


def graphs(framework: str, labeled: int, unlabeled: int) -> int:
    """Samples whose forward graph is kept at the peak of one iteration."""
    if framework == "cmt":
        return 2 * (labeled + unlabeled)
    if framework == "mean-teacher":
        return labeled + unlabeled
    return labeled


def estimate_memory(net: NetworkShape, *, framework: str, labeled: int, unlabeled: int,
                    kernels: Sequence[Triple] | None = None, optimizer: str = "sgd",
                    amp: bool = True, dataset_bytes: int = 0) -> MemoryEstimate:
    """Peak bytes of one iteration of ``framework`` on ``net`` (see the module docstring).

    Gradients are counted twice: the HCO optimizers keep g_L and g_U apart.
    """
    if framework not in NETWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose one of {', '.join(NETWORKS)}")
    params = parameter_count(net.n_filters, in_channels=net.in_channels,
                             num_classes=net.num_classes, kernels=kernels, strides=net.strides)
    element = 2 if amp else 4
    samples = graphs(framework, labeled, unlabeled)
    finest = scale_voxels(net.patch, net.strides)[0]
    activations = samples * (saved_elements(net) * element
                             + LOSS_TENSORS * net.num_classes * finest * 4)
    transients = samples * TRANSIENT_MAPS * net.n_filters * finest * 4
    trained = TRAINED[framework]
    weights = NETWORKS[framework] * params * 4
    gradients = 2 * trained * params * 4
    state = trained * OPTIMIZER_SLOTS.get(optimizer, 2) * params * 4
    workspace = int(WORKSPACE_FRACTION * (activations + transients))
    return MemoryEstimate(parameters=params, weights=weights, gradients=gradients,
                          optimizer=state, activations=activations, transients=transients,
                          dataset=dataset_bytes, workspace=workspace)
