"""Weight ramps and learning-rate factors of the reference code, as plain host-side floats."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t/T)^2) for t clipped to [0, T]; 1 when T is 0 (Laine & Aila; SSL4MIS, UCMT)."""
    if length == 0:
        return 1.0
    t = min(max(current, 0.0), length)
    phase = 1.0 - t / length
    return float(math.exp(-5.0 * phase * phase))


def poly_lr_factor(iteration: int, total: int, *, power: float = 0.9) -> float:
    """SSL4MIS's poly decay as a factor of the base LR at 0-based ``iteration``.

    SSL4MIS sets lr = base (1 - i/max)^0.9 *after* step i, so step i uses the value of i - 1 and
    the first step the base LR.
    """
    if iteration <= 0:
        return 1.0
    return float(max(1.0 - (iteration - 1) / total, 0.0) ** power)
