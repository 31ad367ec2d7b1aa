"""Loss-ratio dynamics: per-epoch mean ± batch-means SE pooled over a group, differences to the
first arm."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hco_cli.errors import ConfigError, DataError
from hco_cli.evaluation.dynamics import compare_dynamics, dynamics_tables, write_dynamics
from tests.evaluation.compare_fixtures import cases, one_class, step, write_run, write_summary

SQRT3 = math.sqrt(3.0)


def _runs(root: Path) -> tuple[str, str]:
    """Arm A: one run; arm B: two seeds whose steps are pooled per epoch."""
    pre = [step(0, 0, None, phase="pretrain"), step(0, 1, None, phase="pretrain")]
    a = [*pre, step(0, 2, 1.0), step(0, 3, 2.0), step(0, 4, 3.0)]
    a += [step(1, 5, 2.0), step(1, 6, None), step(1, 7, 4.0)]
    write_run(root, "sgd-s0", steps=a)
    write_run(root, "hco-s0", steps=[*pre, step(0, 2, 2.0), step(0, 3, 3.0), step(1, 4, 3.0)])
    write_run(root, "hco-s1", steps=[*pre, step(0, 2, 4.0), step(1, 3, 5.0), step(1, 4, 6.0)])
    return str(root / "sgd-s0"), f"hco={root}/hco-s*"


def test_epoch_mean_sem_and_differences(tmp_path: Path) -> None:
    """At most three steps per run and epoch: the batch length floor(sqrt(steps / runs)) is 1,
    so every step is its own batch and the batch-means SE is sd/sqrt(n) of the steps."""
    result = compare_dynamics(_runs(tmp_path))
    a, b = result.arms
    assert (a.n_runs, b.n_runs) == (1, 2)
    assert [(e.epoch, e.n_steps) for e in a.epochs] == [(0, 3), (1, 2)]
    assert a.epochs[0].mean == pytest.approx(2.0) and a.epochs[0].sem == pytest.approx(1 / SQRT3)
    assert a.epochs[1].mean == pytest.approx(3.0) and a.epochs[1].sem == pytest.approx(1.0)
    # B pools both seeds: epoch 0 = [2, 3, 4], epoch 1 = [3, 5, 6].
    assert b.epochs[0].mean == pytest.approx(3.0) and b.epochs[0].sem == pytest.approx(1 / SQRT3)
    sem_b1 = np.std([3.0, 5.0, 6.0], ddof=1) / SQRT3
    assert b.epochs[1].mean == pytest.approx(14 / 3) and b.epochs[1].sem == pytest.approx(sem_b1)
    diff0, sem0 = result.diffs[("hco", ("selftrain", 0))]
    assert diff0 == pytest.approx(1.0) and sem0 == pytest.approx(math.sqrt(2 / 3))
    diff1, sem1 = result.diffs[("hco", ("selftrain", 1))]
    assert diff1 == pytest.approx(5 / 3) and sem1 == pytest.approx(math.hypot(sem_b1, 1.0))
    (summary,) = result.summaries
    assert summary.mean_reference == pytest.approx(2.5)
    assert summary.mean_diff == pytest.approx(4 / 3)
    assert summary.rel_diff == pytest.approx((4 / 3) / 2.5)
    assert (summary.n_epochs, summary.epochs_higher) == (2, 2)
    assert b.step_ratio.size == 6  # only finite-ratio steps


def test_bins_pool_epochs(tmp_path: Path) -> None:
    result = compare_dynamics(_runs(tmp_path), bin_width=2)
    (e,) = result.arms[0].epochs
    assert (e.epoch, e.n_steps, e.x) == (0, 5, 0.5)
    assert e.mean == pytest.approx(np.mean([1, 2, 3, 2, 4]))
    # 5 steps of one run: batch length floor(sqrt(5)) = 2, so 2 batches, [1, 2, 3] (mean 2)
    # and [2, 4] (mean 3); SE^2 = (3 (2 - 2.4)^2 + 2 (3 - 2.4)^2) / (2 - 1) / 5.
    assert e.sem == pytest.approx(math.sqrt((3 * 0.4**2 + 2 * 0.6**2) / 5))
    with pytest.raises(ConfigError, match="--bin"):
        compare_dynamics(_runs(tmp_path / "x"), bin_width=0)


def test_batches_stay_within_a_run_in_time_order(tmp_path: Path) -> None:
    """Two runs of 16 steps in one bin, one rising, one falling: each run's steps are cut in
    logged order into 4 batches of 4 (floor(sqrt(32 / 2)) = 4), and the 8 batch means give the
    SE. Batches over both runs' steps of an epoch would all have mean 2 (SE 0), and the plain
    SEM over the 32 steps is smaller still than the batch-means SE of these trends."""
    up = [1 + t / 10 for t in range(16)]
    down = [3 - t / 10 for t in range(16)]
    write_run(tmp_path, "mix-s0", steps=[step(t, t, r) for t, r in enumerate(up)])
    write_run(tmp_path, "mix-s1", steps=[step(t, t, r) for t, r in enumerate(down)])
    write_run(tmp_path, "flat", steps=[step(t, t, 2.0) for t in range(16)])
    result = compare_dynamics([f"mix={tmp_path}/mix-s*", str(tmp_path / "flat")], bin_width=16)
    (e,) = result.arms[0].epochs
    batch_means = [1.15, 1.55, 1.95, 2.35, 2.85, 2.45, 2.05, 1.65]
    expected = float(np.std(batch_means, ddof=1)) / math.sqrt(8)
    assert (e.n_steps, e.mean) == (32, pytest.approx(2.0))
    assert e.sem == pytest.approx(expected)
    assert e.sem > 1.5 * float(np.std(up + down, ddof=1)) / math.sqrt(32)
    flat = result.arms[1].epochs[0]
    assert flat.sem == 0.0
    assert result.diffs[("flat", ("selftrain", 0))][1] == pytest.approx(expected)


def test_phases_with_restarting_epochs_are_laid_end_to_end(tmp_path: Path) -> None:
    steps = [step(0, 0, 0.5, phase="pretrain"), step(1, 1, 0.5, phase="pretrain")]
    steps += [step(0, 2, 1.0), step(1, 3, 1.0)]
    write_run(tmp_path, "a", steps=steps)
    write_run(tmp_path, "b", steps=steps)
    result = compare_dynamics([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(e.phase, e.epoch, e.x) for e in result.arms[0].epochs] == [
        ("pretrain", 0, 0.0),
        ("pretrain", 1, 1.0),
        ("selftrain", 0, 2.0),
        ("selftrain", 1, 3.0),
    ]


def test_tables_and_files(tmp_path: Path) -> None:
    result = compare_dynamics(_runs(tmp_path))
    per_epoch, summary = dynamics_tables(result)
    texts = [[c.text for c in row] for row in per_epoch.rows]
    assert texts[0] == ["selftrain", "0", "2.000 ± 0.577 (n=3)", "3.000 ± 0.577 (n=3)",
                        "+1.000 ± 0.816"]  # fmt: skip
    assert [c.text for c in summary.rows[1]][-3:] == ["+1.333", "+53.3%", "2/2"]
    write_dynamics(result, json_path=tmp_path / "d.json", csv_path=tmp_path / "d.csv",
                   markdown_path=tmp_path / "d.md")  # fmt: skip
    data = json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))
    assert data["bin_width"] == 1 and len(data["epochs"]) == 4
    hco1 = next(r for r in data["epochs"] if r["arm"] == "hco" and r["epoch"] == 1)
    assert hco1["diff_vs_reference"] == pytest.approx(5 / 3) and hco1["reference"] == "sgd-s0"
    assert data["summary"][0]["rel_diff"] == pytest.approx(0.5333, abs=1e-4)
    rows = (tmp_path / "d.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("arm,runs,phase,epoch,n_steps,mean_ratio,sem_ratio")
    assert len(rows) == 5
    markdown = (tmp_path / "d.md").read_text(encoding="utf-8")
    assert "| selftrain | 0 | 2.000 ± 0.577 (n=3) |" in markdown


def test_errors(tmp_path: Path) -> None:
    write_run(tmp_path, "nolog")
    write_run(tmp_path, "nofinite", steps=[step(0, 0, None)])
    write_run(tmp_path, "ok", steps=[step(0, 0, 1.0)])
    with pytest.raises(DataError, match=r"no metrics\.jsonl"):
        compare_dynamics([str(tmp_path / "ok"), str(tmp_path / "nolog")])
    with pytest.raises(DataError, match="no training step with a finite loss ratio"):
        compare_dynamics([str(tmp_path / "ok"), str(tmp_path / "nofinite")])
    summary = write_summary(tmp_path / "s.json", cases(2), one_class([0.5, 0.6]))
    with pytest.raises(DataError, match="needs run folders"):
        compare_dynamics([str(tmp_path / "ok"), str(summary)])
    with pytest.raises(ConfigError, match="at least two arms"):
        compare_dynamics([str(tmp_path / "ok")])
