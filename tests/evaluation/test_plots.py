"""Box plots and dynamics plots: real PNG files, LOWESS on known data, the missing extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hco_cli.errors import ConfigError, MissingExtraError
from hco_cli.evaluation import plots
from hco_cli.evaluation.compare import compare_runs
from hco_cli.evaluation.curves import compare_curves
from hco_cli.evaluation.dynamics import compare_dynamics
from tests.evaluation.compare_fixtures import cases, one_class, step, write_run, write_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _two_class_arms(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for name, shift in (("a", 0.0), ("b", 0.03)):
        d1 = rng.uniform(0.7, 0.9, 8) + shift
        d2 = rng.uniform(0.6, 0.8, 8) + shift
        values = {**one_class(d1), **one_class(d2, cls="2")}
        paths.append(str(write_summary(tmp_path / f"{name}.json", cases(8), values)))
    return paths


def test_boxplot_png(tmp_path: Path) -> None:
    result = compare_runs(_two_class_arms(tmp_path))
    target = tmp_path / "figs" / "box.png"
    plots.plot_boxplots(result, target)
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not list(target.parent.glob(".*tmp"))


def test_dynamics_png_and_svg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name, level in (("sgd", 1.0), ("hco", 1.1)):
        steps = [step(e, 4 * e + k, float(level + 0.01 * e + rng.normal(0, 0.05)))
                 for e in range(30) for k in range(4)]  # fmt: skip
        write_run(tmp_path, name, steps=steps)
    result = compare_dynamics([str(tmp_path / "sgd"), str(tmp_path / "hco")])
    png = tmp_path / "dyn.png"
    plots.plot_dynamics(result, png, frac=0.5)
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    svg = tmp_path / "dyn.svg"
    plots.plot_dynamics(result, svg)
    assert "<svg" in svg.read_text(encoding="utf-8")


def test_curves_png(tmp_path: Path) -> None:
    for arm, level in (("sgd", 0.80), ("hco", 0.78)):
        for seed in (1, 2):
            records = [{"phase": "val", "train_phase": phase, "iter": it, "split": "val",
                        "dice": level + 0.001 * it / 100 + 0.01 * seed}
                       for phase, its in (("pretrain", (100, 200)), ("selftrain", (300, 400)))
                       for it in its]
            write_run(tmp_path, f"{arm}-s{seed}", seed=seed, steps=records)
    result = compare_curves([f"sgd={tmp_path}/sgd-s*", f"hco={tmp_path}/hco-s*"])
    png = tmp_path / "figs" / "curves.png"
    plots.plot_curves(result, png)
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    assert not list(png.parent.glob(".*tmp"))


def test_lowess_trend_follows_a_noisy_line() -> None:
    # Several steps per epoch, as in training logs; noise of +-0.01 around a line. (An exact
    # line is degenerate for LOWESS' robustness weights: all residuals are zero.)
    x = np.repeat(np.arange(20.0), 3)
    y = 0.5 + 0.1 * x + 0.01 * np.tile([1.0, -1.0, 0.5], 20)
    xs, ys = plots._trend(x, y, 0.3)
    np.testing.assert_array_equal(xs, np.arange(20.0))
    np.testing.assert_allclose(ys, 0.5 + 0.1 * xs, atol=0.01)


def test_bad_format_and_frac(tmp_path: Path) -> None:
    result = compare_runs(_two_class_arms(tmp_path))
    with pytest.raises(ConfigError, match="unsupported format"):
        plots.plot_boxplots(result, tmp_path / "box.bmp")
    write_run(tmp_path, "r", steps=[step(0, 0, 1.0), step(0, 1, 2.0)])
    dyn = compare_dynamics([f"x={tmp_path}/r", f"y={tmp_path}/r"])
    with pytest.raises(ConfigError, match="lowess-frac"):
        plots.plot_dynamics(dyn, tmp_path / "d.png", frac=0.0)


def test_missing_extra_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = compare_runs(_two_class_arms(tmp_path))
    monkeypatch.setitem(sys.modules, "statsmodels", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"pip install 'hco-cli\[plot\]'"):
        plots.plot_boxplots(result, tmp_path / "box.png")
    assert not (tmp_path / "box.png").exists()
