"""Optimizer diagnostics in ``hco compare --dynamics``: medians, the step-norm ratio r, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from hco_cli.evaluation import plots
from hco_cli.evaluation.dynamics import compare_dynamics, dynamics_tables, write_dynamics
from tests.evaluation.compare_fixtures import step, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _diagnosed(epoch: int, it: int, norm: float, cos: float,
              admitted: float | None) -> dict[str, Any]:
    record = step(epoch, it, 1.0)
    record.update(step_norm=norm, step_ratio=norm / 0.01, grad_norm_l=1.0, grad_norm_u=2.0,
                  cos_lu=cos, admitted=admitted, admitted_std=None if admitted is None else 0.1,
                  admitted_min=None, admitted_max=None)
    return record


def _arms(root: Path) -> list[str]:
    # sgd: norms 1, 2, 3 (median 2); hco two seeds: 3, 5 and 4, 6 (median 4.5), r = 2.25.
    sgd = [_diagnosed(e, e, n, 0.1 * e, None) for e, n in enumerate((1.0, 2.0, 3.0))]
    write_run(root, "sgd-s0", steps=[step(0, 100, 1.0), *sgd])  # an undiagnosed step too
    for seed, norms in ((0, (3.0, 5.0)), (1, (4.0, 6.0))):
        steps = [_diagnosed(e, e, n, -0.2, 0.4 + 0.1 * seed) for e, n in enumerate(norms)]
        write_run(root, f"hco-s{seed}", optimizer="sgd-hco", steps=steps)
    return [str(root / "sgd-s0"), f"hco={root}/hco-s*"]


def test_medians_and_step_norm_ratio(tmp_path: Path) -> None:
    result = compare_dynamics(_arms(tmp_path))
    sgd, hco = result.diagnostics
    assert (sgd.n_runs, sgd.n_steps, hco.n_runs, hco.n_steps) == (1, 3, 2, 4)
    assert sgd.median("step_norm") == 2.0 and hco.median("step_norm") == 4.5
    assert sgd.median("cos_lu") == pytest.approx(0.1) and hco.median("cos_lu") == -0.2
    assert math.isnan(sgd.median("admitted")) and hco.median("admitted") == pytest.approx(0.45)
    table = dynamics_tables(result)[-1]
    assert table.title.startswith("Optimizer diagnostics")
    assert [c.text for c in table.rows[1]][-1] == "2.25"
    write_dynamics(result, json_path=tmp_path / "d.json")
    payload = json.loads((tmp_path / "d.json").read_text())
    assert [d["arm"] for d in payload["diagnostics"]] == ["sgd-s0", "hco"]
    assert payload["diagnostics"][1]["step_norm_ratio"] == 2.25
    assert payload["diagnostics"][0]["median_admitted"] is None


def test_runs_without_diagnostics_give_no_table(tmp_path: Path) -> None:
    write_run(tmp_path, "a", steps=[step(0, 1, 1.0), step(1, 2, 2.0)])
    write_run(tmp_path, "b", steps=[step(0, 1, 1.5), step(1, 2, 2.5)])
    result = compare_dynamics([str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.diagnostics == []
    assert len(dynamics_tables(result)) == 2


def test_dynamics_plot_has_the_diagnostics_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("statsmodels")
    result = compare_dynamics(_arms(tmp_path))
    png = tmp_path / "dyn.png"
    plots.plot_dynamics(result, png, frac=0.9)
    assert png.read_bytes().startswith(PNG_MAGIC)
    plain = compare_dynamics(_arms(tmp_path / "again"))
    plain.diagnostics = []
    single = tmp_path / "single.png"
    plots.plot_dynamics(plain, single, frac=0.9)
    assert png.stat().st_size > single.stat().st_size  # four panels against one
