"""Figures for ``hco compare``: per-case box plots, loss-ratio dynamics and validation curves.

Plotting is the optional ``plot`` extra (matplotlib, statsmodels), imported only when a figure
is asked for. Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so no
global backend is switched and nothing needs a display.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hco_cli.errors import ConfigError, MissingExtraError
from hco_cli.evaluation.compare import Comparison
from hco_cli.evaluation.curves import Curves
from hco_cli.evaluation.dynamics import Dynamics
from hco_cli.io_utils import atomic_path

FORMATS = ("png", "pdf", "svg")
_LABELS = {"dice": "Dice (%)", "jaccard": "Jaccard (%)", "asd": "ASD", "hd95": "HD95"}
_ORDER = ("dice", "jaccard", "asd", "hd95")


def _require(module: str) -> ModuleType:
    """Import a module of the ``plot`` extra or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"plotting needs {top}, part of the 'plot' extra: pip install 'hco-cli[plot]'"
        ) from None


def _figure(width: float, height: float) -> Any:
    _require("matplotlib")
    figure_mod = _require("matplotlib.figure")
    agg = _require("matplotlib.backends.backend_agg")
    fig = figure_mod.Figure(figsize=(width, height), layout="constrained")
    agg.FigureCanvasAgg(fig)
    return fig


def check_plot_target(path: Path) -> str:
    """The file format for ``path`` (from its suffix); also checks that the extra is there."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"--plot {path}: unsupported format; use one of .{', .'.join(FORMATS)}")
    _require("matplotlib")
    _require("statsmodels")
    return fmt


def _save(fig: Any, path: Path) -> None:
    fmt = check_plot_target(path)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150)


def plot_boxplots(result: Comparison, path: Path) -> None:
    """One box plot per (class, metric): the per-case values of every arm, side by side.

    Values are those tested (already averaged over each group's runs); NaN cases are left
    out of their box. Dice and Jaccard are shown in %.
    """
    check_plot_target(path)
    classes = result.classes
    width = max(8.0, 1.1 * len(result.arms) * len(_ORDER))
    fig = _figure(width, 3.2 * len(classes))
    axes = fig.subplots(len(classes), len(_ORDER), squeeze=False)
    unit = "vox" if result.spacing_unit == "voxel" else "mm"
    names = [a.name for a in result.arms]
    for row, cls in enumerate(classes):
        for col, metric in enumerate(_ORDER):
            ax = axes[row, col]
            scale = 100.0 if metric in ("dice", "jaccard") else 1.0
            data = []
            for arm in result.arms:
                v = arm.values[(cls, metric)] * scale
                data.append(v[np.isfinite(v)])
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
            label = _LABELS[metric] if scale != 1.0 else f"{_LABELS[metric]} ({unit})"
            ax.set_title(f"class {cls}: {label}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _trend(x: np.ndarray, y: np.ndarray, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """LOWESS fit of ``y`` on ``x``, one fitted value per distinct ``x`` (sorted)."""
    smoothers = _require("statsmodels.nonparametric.smoothers_lowess")
    span = float(x.max() - x.min()) if x.size else 0.0
    # delta: points closer than 1% of the x range reuse the neighbouring fit (statsmodels'
    # recommended speed-up); epochs repeat for every step, so the saving is large.
    fit = smoothers.lowess(y, x, frac=frac, delta=0.01 * span, return_sorted=True)
    xs, first = np.unique(fit[:, 0], return_index=True)
    return xs, fit[first, 1]


def plot_dynamics(result: Dynamics, path: Path, *, frac: float = 0.3) -> None:
    """LOWESS trend of L_U/L_L over epochs per arm, with a ± standard-error band around it.

    The trend is fitted to the raw step-wise ratios (as in the paper's Figure 3); the band at
    each epoch is the trend value ± the batch-means standard error of that epoch's steps
    (:func:`~hco_cli.evaluation.stats.batch_means_sem`). ``frac`` is the LOWESS
    span (fraction of the points used for each local fit). Where runs logged optimizer
    diagnostics, three more panels show their LOWESS trends: the step norm, cos(g_L, g_U) and
    the admitted fraction.
    """
    if not 0.0 < frac <= 1.0:
        raise ConfigError(f"--lowess-frac must be in (0, 1], got {frac}")
    check_plot_target(path)
    if result.diagnostics:
        fig = _figure(12.0, 8.0)
        axes = fig.subplots(2, 2).ravel()
    else:
        fig = _figure(8.0, 4.5)
        axes = [fig.subplots()]
    ax = axes[0]
    for i, arm in enumerate(result.arms):
        colour = f"C{i}"
        xs, ys = _trend(arm.step_x, arm.step_ratio, frac)
        ex = np.array([e.x for e in arm.epochs])
        sem = np.array([e.sem if math.isfinite(e.sem) else 0.0 for e in arm.epochs])
        centre = np.interp(ex, xs, ys) if xs.size > 1 else np.full(ex.shape, ys.mean())
        ax.fill_between(ex, centre - sem, centre + sem, color=colour, alpha=0.25, linewidth=0)
        ax.plot(xs, ys, color=colour, label=f"{arm.name} (runs: {arm.n_runs})")
    bands = "" if result.bin_width == 1 else f" (SE bands per {result.bin_width} epochs)"
    ax.set_xlabel(f"epoch{bands}")
    ax.set_ylabel("L_U / L_L")
    ax.set_title("Unlabeled-to-labeled loss ratio (LOWESS trend ± batch-means SE)")
    ax.grid(alpha=0.3)
    ax.legend()
    colours = {arm.name: f"C{i}" for i, arm in enumerate(result.arms)}
    for ax, key, label in zip(axes[1:], ("step_norm", "cos_lu", "admitted"),
                              ("step norm ||dw||", "cos(g_L, g_U)", "admitted fraction"),
                              strict=False):
        for diag in result.diagnostics:
            y = diag.values[key]
            keep = np.isfinite(y)
            if keep.sum() < 2:
                continue
            xs, ys = _trend(diag.x[keep], y[keep], frac)
            ax.plot(xs, ys, color=colours.get(diag.name, "k"), label=diag.name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log" if key == "step_norm" else "linear")
        ax.set_title(f"{label} (LOWESS trend of the diagnosed steps)")
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_curves(result: Curves, path: Path) -> None:
    """Validation Dice over the iterations: each arm's mean over its runs (thick) and each
    run (thin) on top; below, each later arm's paired difference to the first arm per pair of
    runs (thin) and its mean (thick), in % points."""
    check_plot_target(path)
    fig = _figure(9.0, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    shared = result.points
    x = np.array([i for _, i in shared], dtype=np.float64)
    ref = result.arms[0]
    for k, arm in enumerate(result.arms):
        colour = f"C{k}"
        per_run = np.array([[arm.runs[k].dice[pt] * 100 for pt in shared]
                            for k in result.keys])
        for values in per_run:
            top.plot(x, values, color=colour, linewidth=0.6, alpha=0.35)
        top.plot(x, per_run.mean(axis=0), color=colour, linewidth=1.8,
                 label=f"{arm.name} (runs: {len(result.keys)})")
        if k == 0:
            continue
        diffs = per_run - np.array([[ref.runs[k].dice[pt] * 100 for pt in shared]
                                    for k in result.keys])
        for values in diffs:
            bottom.plot(x, values, color=colour, linewidth=0.6, alpha=0.35)
        bottom.plot(x, diffs.mean(axis=0), color=colour, linewidth=1.8,
                    label=f"{arm.name} - {ref.name}")
    phases = list(dict.fromkeys(p for p, _ in shared))
    for phase in phases[1:]:  # where a later phase starts
        start = min(i for p, i in shared if p == phase)
        for ax in (top, bottom):
            ax.axvline(start, color="0.5", linestyle=":", linewidth=1)
    bottom.axhline(0.0, color="k", linewidth=0.8)
    top.set_ylabel(f"Dice on {result.split} (%)")
    top.set_title(f"Validation curves (Dice on {result.split}; phases: {', '.join(phases)})")
    bottom.set_ylabel("difference (% points)")
    bottom.set_xlabel("iteration")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
