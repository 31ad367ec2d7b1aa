"""scripts/collect_round.py on a constructed round: unpacked whole, logs compressed the same
way everywhere, the in-round and pooled comparisons written, refusals in one line."""

from __future__ import annotations

import json
import lzma
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hco_cli.evaluation.curves import compare_curves, write_curves
from hco_cli.evaluation.dynamics import compare_dynamics, write_dynamics
from tests.evaluation.compare_fixtures import cases, one_class, step, write_run
from tests.file_modules import ROOT, load_file

cr = load_file("scripts/collect_round.py", "collect_round")

DICE = np.array([0.80, 0.85, 0.90, 0.70, 0.75, 0.88, 0.81, 0.79])


def _validation(it: int, dice: float) -> dict[str, Any]:
    """A self-training validation record as hco train logs it, with the test split's Dice."""
    return {"phase": "val", "train_phase": "selftrain", "iter": it, "split": "val",
            "dice": dice, "dice_per_class": [dice], "best": False, "also": {"test": dice - 0.1}}


def _round(root: Path, seed: int, arms: dict[str, float], *, validations: bool = False) -> None:
    for arm, shift in arms.items():
        steps = [step(0, i, 1.0 + shift) for i in range(1, 11)]
        for i, record in enumerate(steps):
            record["time"] = 0.1 * (i + 1)
        if validations:
            steps += [_validation(it, 0.8 + shift + 0.01 * it) for it in (5, 10)]
        evals = {c: (cases(8), one_class(DICE + shift)) for c in ("best", "last", "best-test")}
        write_run(root / arm, f"all-s{seed}", seed=seed, optimizer="sgd", steps=steps,
                  evals=evals)
    (root / "_pretrain" / f"all-s{seed}").mkdir(parents=True)
    (root / "sweep.log").write_text("done\n", encoding="utf-8")


def _tarball(tmp_path: Path, seed: int, arms: dict[str, float], *,
             validations: bool = False) -> Path:
    sweep = tmp_path / f"sweep{seed}"
    _round(sweep, seed, arms, validations=validations)
    out = tmp_path / f"ablation{seed}.tar.gz"
    with tarfile.open(out, "w:gz") as archive:
        archive.add(sweep, arcname=".")
    return out


def test_a_round_unpacked_compressed_compared_and_pooled(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    results = tmp_path / "results"
    _round(results / "round1", 1, {"sgd": 0.0, "hco-r3": -0.02})
    tarball = _tarball(tmp_path, 2, {"sgd": 0.0, "hco-r3": 0.01, "hco-r4": -0.01})
    dest = results / "round9"
    assert cr.main([str(tarball), str(dest), "--pool", "1"]) == 0
    out = capsys.readouterr().out
    assert "self-training 0.1000 s/iteration" in out and "$ hco compare" in out
    assert "selftrain     10 its, median  100.0 ms: steps      0.9 s" in out  # time_breakdown
    logs = sorted(dest.rglob("metrics.jsonl*"))
    assert logs and all(p.name == "metrics.jsonl.xz" for p in logs)
    with lzma.open(logs[0], "rt", encoding="utf-8") as lines:
        assert json.loads(next(lines))["iter"] == 1
    again = tmp_path / "again" / "arm" / "run"  # the same log compresses into the same bytes
    again.mkdir(parents=True)
    (again / "metrics.jsonl").write_bytes(lzma.decompress(logs[0].read_bytes()))
    assert [p.read_bytes() for p in cr.compress_logs(tmp_path / "again")] == [logs[0].read_bytes()]
    table = (dest / "compare-last.md").read_text(encoding="utf-8")
    assert table.index("| sgd |") < table.index("| hco-r3 |") < table.index("| hco-r4 |")
    assert "two-sided" in table
    assert (dest / "dynamics.png").is_file() and (dest / "compare-best.json").is_file()
    pooled = (results / "compare-round19-last.md").read_text(encoding="utf-8")
    assert "hco-r3" in pooled and "hco-r4" not in pooled  # round 1 holds no hco-r4
    assert "round1/all-s1" in pooled and "round9/all-s2" in pooled  # paired by round and seed
    # a round is committed once
    assert cr.main([str(tarball), str(dest)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {dest} exists: a round is committed once (remove it to redo)")


def test_refusals_leave_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert cr.main([str(tmp_path / "none.tar.gz"), str(tmp_path / "round3")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert cr.main([str(tmp_path / "none.tar.gz"), str(tmp_path / "r3")]) == 1
    assert "named round<N>" in capsys.readouterr().err
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball")
    assert cr.main([str(broken), str(tmp_path / "round4")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not any(p.name.startswith((".round", "round")) for p in tmp_path.iterdir())


def test_a_full_protocol_batch_rewrites_the_study_table(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    tarball = _tarball(tmp_path, 1, {"sgd": 0.0, "sgd-hco": 0.01}, validations=True)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- la-full-summary:begin -->\nold summary\n"
                      "<!-- la-full-summary:end -->\n<!-- la-full:begin -->\nold\n"
                      "<!-- la-full:end -->\n", encoding="utf-8")
    dest = tmp_path / "la-full" / "8l" / "session1"
    assert cr.main([str(tarball), str(dest), "--full-protocol", "--readme", str(readme)]) == 0
    assert (dest / "sgd-hco" / "all-s1" / "metrics.jsonl.xz").is_file()
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text and "| `sgd-hco` (hco) | best on validation | 1 | " in text
    assert "| +1.00 | " in text  # one seed: the difference of the two runs' means
    # the opening summary too: one seed, so no verdict yet
    assert ("| `sgd-hco`, the printed Algorithm 2 | +1.00 / +1.00 / +1.00 (1 seed) | interim, "
            "1 of the 3 planned seeds: undecided on all three | not run |  |") in text
    curves = tmp_path / "la-full" / "curves"
    assert sorted(p.name for p in curves.iterdir()) == [
        f"8l-{kind}.{ext}" for kind, ext in (("dynamics", "json"), ("dynamics", "md"),
                                             ("test", "json"), ("test", "md"), ("test", "png"),
                                             ("val", "json"), ("val", "md"))]
    test = json.loads((curves / "8l-test.json").read_text(encoding="utf-8"))
    assert "sgd-hco" in json.dumps(test)
    # sgd-hco's test Dice is 1.00 point above sgd's at both validations
    assert "+1.00" in (curves / "8l-test.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert cr.main([str(tarball), str(tmp_path / "la-full" / "x" / "s2"),
                    "--full-protocol"]) == 1
    assert "results/la-full/<L>l/<session>" in capsys.readouterr().err


@pytest.mark.slow  # 15 s: six hco compare processes
def test_the_study_curves_add_every_arm_on_the_common_seeds(tmp_path: Path) -> None:
    """A later session's arm (sgd-co, seed 1 only) beside the pair (seeds 1 and 2): the pair's
    curves keep both seeds, the all-arm ones pair seed 1 across all three arms."""
    labeled = tmp_path / "la-full" / "8l"
    _round(labeled / "s1", 1, {"sgd": 0.0, "sgd-hco": 0.01}, validations=True)
    _round(labeled / "s2", 2, {"sgd": 0.0, "sgd-hco": 0.01}, validations=True)
    _round(labeled / "s3", 1, {"sgd-co": 0.02}, validations=True)
    assert len(cr.compress_logs(labeled)) == 5  # archived logs only, as committed
    out = tmp_path / "curves"
    out.mkdir()
    cr.study_curves(labeled, out)
    pair = (out / "8l-test.md").read_text(encoding="utf-8")
    assert "(s1, s2)" in pair and "sgd-co" not in pair
    table = (out / "8l-all-arms-test.md").read_text(encoding="utf-8")
    assert "(s1)" in table and "sgd-co - sgd per pair" in table
    assert "sgd-hco - sgd per pair" in table and (out / "8l-all-arms-dynamics.json").is_file()
    assert not list(out.glob("8l-sgd-co-*"))  # one arm beside the pair: all-arms says it all


def test_each_arm_beside_the_pair_gets_its_own_curves(tmp_path: Path) -> None:
    """Two arms beside the pair: the all-arm curves pair only the seeds all four have, so each
    arm also gets its curves beside the pair, on every seed it shares with it."""
    labeled = tmp_path / "8l"
    for arm in ("sgd", "sgd-hco", "sgd-co", "hco-r1"):
        (labeled / "s1" / arm / "all-s1").mkdir(parents=True)
        (labeled / "s1" / arm / "all-s1" / "run.json").write_text("{}", encoding="utf-8")
    groups = dict(cr.study_groups(labeled))
    assert list(groups) == ["", "-all-arms", "-sgd-co", "-hco-r1"]
    assert groups["-hco-r1"] == [f"{a}={labeled}/*/{a}/*" for a in ("sgd", "sgd-hco", "hco-r1")]
    assert [spec.split("=")[0] for spec in groups["-all-arms"]] == [
        "sgd", "sgd-hco", "sgd-co", "hco-r1"]


def _regenerated(labeled: str, suffix: str, split: str, tmp_path: Path) -> bool:
    """Whether results/la-full/curves/<labeled><suffix>-<split>.json is what the committed runs
    give (compare_curves in this process, as collect_round's hco compare calls compute it)."""
    specs = dict(cr.study_groups(Path("results/la-full") / labeled))[suffix]
    out = tmp_path / f"{labeled}{suffix}-{split}.json"
    write_curves(compare_curves(specs, split=split, bin_width=10), json_path=out)
    committed = ROOT / "results" / "la-full" / "curves" / out.name
    return json.loads(out.read_text(encoding="utf-8")) == json.loads(
        committed.read_text(encoding="utf-8"))


def test_committed_all_arm_curves_are_what_the_runs_give(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the committed files name the runs relative to the repository
    assert _regenerated("8l", "-all-arms", "test", tmp_path)


def _dynamics_regenerated(labeled: str, suffix: str, tmp_path: Path) -> bool:
    """Whether results/la-full/curves/<labeled><suffix>-dynamics.json is what the committed
    runs give, with the options collect_round passes."""
    specs = dict(cr.study_groups(Path("results/la-full") / labeled))[suffix]
    out = tmp_path / f"{labeled}{suffix}-dynamics.json"
    found = compare_dynamics(specs, bin_width=500,
                             common_seeds=None if suffix == cr.ALL_SEEDS_GROUP else True)
    write_dynamics(found, json_path=out)
    committed = ROOT / "results" / "la-full" / "curves" / out.name
    return json.loads(out.read_text(encoding="utf-8")) == json.loads(
        committed.read_text(encoding="utf-8"))


@pytest.mark.slow  # 10 s: every committed curve file of the study
def test_every_committed_study_curve_is_what_the_runs_give(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.chdir(ROOT)
    for labeled in ("8l", "4l"):
        for suffix, _ in cr.study_groups(Path("results/la-full") / labeled):
            for split in ("test", "val"):
                assert _regenerated(labeled, suffix, split, tmp_path), (labeled, suffix, split)
            assert _dynamics_regenerated(labeled, suffix, tmp_path), (labeled, suffix)
