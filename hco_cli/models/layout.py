"""The V-Net's layout as plain numbers: stages, convolutions per stage, default strides.

Torch-free, so that planning and configuration can reason about the network without loading it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Normalization = Literal["batchnorm", "instancenorm", "groupnorm", "none"]
GROUPNORM_GROUPS = 16  # BCP/UA-MT use GroupNorm(16, C)
# Four stride-2 stages: every input size must be a multiple of 2^4 for the skips to line up.
SIZE_MULTIPLE = 16
STAGES = 5  # scales; STAGES - 1 down-samplings
ENCODER_CONVS = (1, 2, 3, 3, 3)
DECODER_CONVS = (1, 2, 3, 3)  # per scale, finest first (block_nine, eight, seven, six)
Triple = tuple[int, int, int]
DEFAULT_STRIDES: tuple[Triple, ...] = ((2, 2, 2),) * (STAGES - 1)
DEFAULT_KERNELS: tuple[Triple, ...] = ((3, 3, 3),) * STAGES


def size_multiples(strides: Sequence[Sequence[int]] | None) -> Triple:
    """Per axis, the product of the strides: every input size must be a multiple of it."""
    rows = strides or DEFAULT_STRIDES
    x, y, z = (math.prod(int(s[a]) for s in rows) for a in range(3))
    return (x, y, z)
