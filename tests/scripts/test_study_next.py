"""scripts/study_next.py on constructed study folders: which planned runs are left, and the
start and collect lines of the next batch (the second run chained through THEN_*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.file_modules import ROOT, load_file

sn = load_file("scripts/study_next.py", "study_next")


def _run(root: Path, labeled: int, session: str, arm: str, seed: int) -> None:
    run = root / f"{labeled}l" / session / arm / f"all-s{seed}"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"labeled": labeled, "seed": seed}),
                                  encoding="utf-8")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Everything before sgd-co's seed 3 at 8 labeled (as on 2026-12-03c), and a shared
    pre-training folder that is no arm."""
    for seed in (1, 2, 3):
        for labeled in (8, 4):
            for arm in ("sgd", "sgd-hco"):
                _run(tmp_path, labeled, f"s{seed}", arm, seed)
        _run(tmp_path, 8, f"r{seed}", "hco-r1", seed)
    for seed in (1, 2):
        _run(tmp_path, 8, f"c{seed}", "sgd-co", seed)
    (tmp_path / "8l" / "s1" / "_pretrain" / "all-s1").mkdir(parents=True)
    return tmp_path


def test_the_next_batch_chains_a_run_of_the_other_label_count(root: Path,
                                                               capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    assert [(p.labeled, p.arm, p.seed) for p in sn.missing(root)] == [
        (8, "sgd-co", 3), (4, "hco-r1", 1), (4, "hco-r1", 2), (4, "hco-r1", 3),
        (8, "hco-r3", 1), (8, "hco-r3", 2), (8, "hco-r3", 3)]
    assert sn.main([str(root), "--session", "2026-12-04"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("17 of 24 planned runs done; left: sgd-co s3 8l, hco-r1 s1 4l")
    assert lines.pop(1) == ("beyond the plan, where a batch has room: hco-r3 s1 4l, hco-r3 s2 4l, "
                            "hco-r3 s3 4l, sgd-co s1 4l, sgd-co s2 4l, sgd-co s3 4l")
    assert lines[1] == (
        "CONFIG=sample_configs/la_bcp_study1.yaml THEN_CONFIG=sample_configs/la_bcp_study1_4l.yaml"
        " THEN_ARMS=sample_configs/arms/la_full_r1.yaml THEN_SEEDS=1 COMPILE=reduce-overhead"
        " DETERMINISTIC=1 SHARE_PRETRAINING=0 LCC_CHECK=0 bash scripts/device_ablation.sh start"
        " sample_configs/arms/la_full_co.yaml 3 1 1")
    assert lines[2:] == [
        "python scripts/collect_round.py <files_at>/ablation.tar.gz "
        "results/la-full/8l/2026-12-04 --full-protocol",
        "python scripts/collect_round.py <files_at>/ablation-then.tar.gz "
        "results/la-full/4l/2026-12-04 --full-protocol"]
    for line in lines[1:3]:  # every file the lines name is in the repository
        for word in line.split():
            value = word.split("=", 1)[-1]
            if value.startswith(("sample_configs/", "scripts/")):
                assert (ROOT / value).is_file(), value


def test_two_runs_of_one_label_count_go_to_separate_folders(root: Path) -> None:
    _run(root, 8, "c3", "sgd-co", 3)
    _run(root, 4, "q1", "hco-r1", 1)
    _run(root, 4, "q2", "hco-r1", 2)
    _run(root, 4, "q3", "hco-r1", 3)
    lines = sn.batch_lines(sn.missing(root)[:2], "x")
    assert "THEN_SEEDS=2" in lines[0] and lines[0].endswith("la_full_pair3.yaml 1 1 1")
    assert lines[2].endswith("ablation-then.tar.gz results/la-full/8l/x-then --full-protocol")


def test_done_and_errors(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for p in sn.missing(root):
        _run(root, p.labeled, "late", p.arm, p.seed)
    assert sn.main([str(root), "--session", "x"]) == 0  # the plan done: beyond it, R3 at 4
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "24 of 24 planned runs done; left: none"
    assert lines[2].endswith("la_full_pair3.yaml 1 1 1") and "THEN_SEEDS=2" in lines[2]
    assert lines[2].startswith("CONFIG=sample_configs/la_bcp_study1_4l.yaml ")
    for p in sn.missing(root, sn.EXTRA):
        _run(root, p.labeled, "later", p.arm, p.seed)
    assert sn.main([str(root)]) == 0
    assert capsys.readouterr().out == "24 of 24 planned runs done; left: none\n"
    assert sn.main([str(tmp_path / "absent")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'absent'}: no such folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sn.main([str(empty)]) == 1  # the printed pair first: no one-arm file for it
    assert capsys.readouterr().err.startswith("error: no one-arm file for sgd s1 8l, sgd s2 8l: ")


def test_the_budget_shrinks_the_batch_to_what_comes_back(root: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    two = sn.STAGING_S + 2 * sn.RUN_S + sn.COLLECT_S
    assert [sn.runs_that_fit(s) for s in (two, two - 1, two - sn.RUN_S, two - sn.RUN_S - 1)] \
        == [2, 1, 1, 0]
    assert sn.runs_that_fit(10_000) == 2
    assert sn.main([str(root), "--budget", "1304"]) == 0  # one run: no THEN_*, one collect line
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "THEN_" not in lines[2]
    assert lines[2].endswith("la_full_co.yaml 3 1 1")
    assert sn.main([str(root), "--budget", "900", "--runs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("900 s of device time do not hold the staging and one run (~1000 s): "
                        "nothing to start this session")
    assert len(lines) == 3


def test_list_prints_every_committed_run_in_the_plans_order(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """--list: one row per committed run (the closing note's run list), the plan's order, the
    wall time in minutes from run.json; a pre-training folder is no run."""
    for labeled, session, arm, seed, wall in ((4, "b", "sgd", 1, 654.0),
                                              (8, "a", "hco-r1", 2, 600.0),
                                              (8, "a", "sgd", 2, 636.0)):
        run = tmp_path / f"{labeled}l" / session / arm / f"all-s{seed}"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({
            "labeled": labeled, "seed": seed, "unlabeled": 80 - labeled - 4,
            "wall_seconds": wall, "device": "cuda (NVIDIA H200)"}), encoding="utf-8")
    (tmp_path / "8l" / "a" / "_pretrain" / "all-s2").mkdir(parents=True)
    assert sn.main([str(tmp_path), "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == [
        "| 8 | `sgd` | 2 | 68 | 10.6 | cuda (NVIDIA H200) | `8l/a/sgd/all-s2` |",
        "| 4 | `sgd` | 1 | 72 | 10.9 | cuda (NVIDIA H200) | `4l/b/sgd/all-s1` |",
        "| 8 | `hco-r1` | 2 | 68 | 10.0 | cuda (NVIDIA H200) | `8l/a/hco-r1/all-s2` |"]
