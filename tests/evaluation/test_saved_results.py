"""Readers of summary.json, run.json and metrics.jsonl: accepted shapes and one-line errors."""

from __future__ import annotations

import gzip
import json
import lzma
import math
from pathlib import Path
from typing import Any

import pytest

from hco_cli.errors import DataError
from hco_cli.evaluation.saved_results import (
    OptimizerSettings,
    read_optimizer_settings,
    read_run_info,
    read_summary,
    read_train_steps,
)
from tests.evaluation.compare_fixtures import cases, one_class, step, summary_dict, write_run


def _write(tmp_path: Path, data: Any, name: str = "summary.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_reads_summary_with_nulls_and_extra_keys(tmp_path: Path) -> None:
    values = {**one_class([0.9, 0.8], hd95=[1.0, math.nan]), **one_class([0.5, 0.6], cls="10")}
    values["2"] = one_class([0.7, 0.7])["1"]
    summary = read_summary(_write(tmp_path, summary_dict(cases(2), values, unit="mm")))
    assert summary.classes == ("1", "2", "10")  # numeric order of label values
    assert summary.spacing_unit == "mm"
    assert math.isnan(summary.cases["case01"]["1"]["hd95"])
    assert summary.cases["case00"]["10"]["dice"] == 0.5


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("std"), "missing std"),
        (lambda d: d.update(spacing_unit="cm"), "spacing_unit must be"),
        (lambda d: d.update(metric_per_case=[]), "non-empty list"),
        (lambda d: d["metric_per_case"][0].pop("metrics"), r"metric_per_case\[0\]"),
        (lambda d: d["metric_per_case"][1]["metrics"]["1"].pop("asd"), "class 1: missing asd"),
        (lambda d: d["metric_per_case"][0]["metrics"]["1"].update(dice="high"), "dice: expected"),
        (lambda d: d["metric_per_case"][1].update(case="case00"), "appears twice"),
        (lambda d: d["metric_per_case"][1]["metrics"].update({"2": d["mean"]["1"]}), "classes"),
    ],
)
def test_summary_shape_errors(tmp_path: Path, mutate: Any, message: str) -> None:
    data = summary_dict(cases(2), one_class([0.9, 0.8]))
    mutate(data)
    with pytest.raises(DataError, match=message):
        read_summary(_write(tmp_path, data))


def test_invalid_json_and_wrong_top_level(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"invalid JSON .*line 1"):
        read_summary(_write(tmp_path, '{"metric_per_case": ['))
    with pytest.raises(DataError, match="expected a JSON object"):
        read_summary(_write(tmp_path, [1, 2]))
    with pytest.raises(DataError, match="cannot read"):
        read_summary(tmp_path / "absent.json")


def test_run_info_fields_and_errors(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r", optimizer="sgd-hco", seed=3, labeled=8, unlabeled=72)
    info = read_run_info(run)
    assert (info.optimizer, info.seed, info.labeled, info.unlabeled) == ("sgd-hco", 3, 8, 72)
    data = json.loads((run / "run.json").read_text(encoding="utf-8"))
    data["labeled"] = "8"
    (run / "run.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="labeled: expected an integer"):
        read_run_info(run)


def test_optimizer_settings_come_from_the_run_config(tmp_path: Path) -> None:
    """R3 as the ablation ran it: its options sorted and spelled as YAML spells them; the
    learning rate as given (None where the config leaves it to the optimizer); the name alone
    for a run folder without config.yaml."""
    run = write_run(tmp_path, "r3", optimizer="sgd-hco", optimizer_config={
        "lr": 0.01, "momentum": 0.9, "options": {"second_term": "increment",
                                                 "refine_mask": "binary", "double_decay": False}})
    settings = read_optimizer_settings(read_run_info(run))
    assert settings == OptimizerSettings(
        "sgd-hco", 0.01, (("double_decay", "false"), ("refine_mask", "binary"),
                          ("second_term", "increment")))
    assert settings.label() == ("sgd-hco (double_decay=false, refine_mask=binary, "
                                "second_term=increment)")
    assert settings.label(with_lr=True).startswith("sgd-hco (lr=0.01, double_decay=false")
    plain = write_run(tmp_path, "sgd", optimizer_config={"lr": None, "options": {}})
    default = read_optimizer_settings(read_run_info(plain))  # the registry's SGD rate
    assert default == OptimizerSettings("sgd", 0.01, lr_default=True)
    assert default.label(with_lr=True) == "sgd (lr=default 0.01)"
    assert OptimizerSettings("sgd").label(with_lr=True) == "sgd (lr=unknown)"
    assert OptimizerSettings("sgd", 0.0213).label(with_lr=True) == "sgd (lr=0.0213)"
    bare = write_run(tmp_path, "bare", optimizer="adamw")
    assert read_optimizer_settings(read_run_info(bare)) == OptimizerSettings("adamw")


@pytest.mark.parametrize(("text", "message"), [
    ("optimizer: [", "not a readable run config"),
    ("optimizer:\n  name: adamw\n", "does not name 'sgd'"),
    ("optimizer:\n  name: sgd\n  lr: fast\n", "optimizer.lr: expected a number"),
    ("optimizer:\n  name: sgd\n  options: [1]\n", "optimizer.options is not a mapping"),
])
def test_optimizer_settings_errors_name_the_config(tmp_path: Path, text: str, message: str) -> None:
    run = write_run(tmp_path, "r")
    (run / "config.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_optimizer_settings(read_run_info(run))


def test_train_steps_skip_other_phases_and_a_partial_last_line(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r", steps=[step(0, 1, None, phase="pretrain"), step(0, 2, 1.5)])
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"phase": "val", "iter": 2, "dice": 0.8}) + "\n")
        f.write('{"phase": "selftrain", "iter"')  # a write still in progress
    steps = read_train_steps(run)
    assert [s.phase for s in steps] == ["pretrain", "selftrain"]
    assert math.isnan(steps[0].ratio) and steps[1].ratio == 1.5


def test_train_steps_read_an_archived_log(tmp_path: Path) -> None:
    """metrics.jsonl.gz gives the same steps as metrics.jsonl; the plain file wins if both."""
    run = write_run(tmp_path, "r", steps=[step(0, 1, 0.5), step(0, 2, 1.5)])
    plain = run / "metrics.jsonl"
    expected = read_train_steps(run)
    with gzip.open(run / "metrics.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))
    plain.write_text(json.dumps({"phase": "selftrain", "iter": 9, "epoch": 0, "loss_l": 1.0,
                                 "loss_u": 2.0, "ratio": 2.0}) + "\n", encoding="utf-8")
    assert [s.ratio for s in read_train_steps(run)] == [2.0]
    plain.unlink()
    assert read_train_steps(run) == expected
    (run / "metrics.jsonl.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match=r"cannot read .*metrics\.jsonl\.gz"):
        read_train_steps(run)


def test_train_steps_read_an_xz_archive_before_a_gz_one(tmp_path: Path) -> None:
    """metrics.jsonl.xz (today's archive) gives the plain log's steps and is taken before an
    older metrics.jsonl.gz; a broken one is a one-line error naming it."""
    run = write_run(tmp_path, "r", steps=[step(0, 1, 0.5), step(0, 2, 1.5)])
    plain = run / "metrics.jsonl"
    expected = read_train_steps(run)
    (run / "metrics.jsonl.xz").write_bytes(lzma.compress(plain.read_bytes()))
    with gzip.open(run / "metrics.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"phase": "selftrain", "iter": 9, "epoch": 0, "loss_l": 1.0,
                            "loss_u": 2.0, "ratio": 2.0}) + "\n")
    plain.unlink()
    assert read_train_steps(run) == expected
    (run / "metrics.jsonl.xz").write_bytes(b"\xfd7zXZ\0 truncated")
    with pytest.raises(DataError, match=r"cannot read .*metrics\.jsonl\.xz"):
        read_train_steps(run)
    (run / "metrics.jsonl.xz").unlink()
    assert [s.ratio for s in read_train_steps(run)] == [2.0]
    (run / "metrics.jsonl.gz").unlink()
    with pytest.raises(DataError, match=r"no metrics\.jsonl \(nor metrics\.jsonl\.xz or \.gz\)"):
        read_train_steps(run)


def test_train_steps_errors(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r")
    with pytest.raises(DataError, match=r"no metrics\.jsonl"):
        read_train_steps(run)
    (run / "metrics.jsonl").write_text('{"phase": "train"\n{"phase": "train"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: invalid JSON"):
        read_train_steps(run)
    record = '{"phase": "train", "iter": 1, "epoch": 0}\n'
    (run / "metrics.jsonl").write_text(record, encoding="utf-8")
    with pytest.raises(DataError, match="line 1: training record lacks loss_l"):
        read_train_steps(run)
