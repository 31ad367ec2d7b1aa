"""validation.also_select_on: a second best checkpoint per split (the reference's test-set
selection), kept beside the val-selected best.pt, exact under resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.errors import ConfigError
from hco_cli.runs.checkpoint import load_checkpoint, load_model_for_inference
from hco_cli.training.entry import resume, train
from hco_cli.training.events import ProgressEvent
from hco_cli.training.logging import read_metrics
from hco_cli.training.validation import Validator
from tests.training.test_loop import tiny_config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    prepare_synthetic(out, labeled=4, unlabeled=4, val=1, test=2, shape=(24, 24, 20))
    return out


def _config(data: Path, run_dir: Path, **changes: Any) -> Any:
    """1 + 6 iterations, validated every iteration, best.pt on val and best-test.pt on test."""
    return tiny_config(data, run_dir, framework__selftrain_iterations=6,
                       validation__every=1, validation__also_select_on=["test"], **changes)


@pytest.fixture(scope="module")
def straight(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    train(_config(synthetic, run))
    return run


def test_best_test_holds_the_selftraining_argmax_of_the_test_score(
        synthetic: Path, straight: Path) -> None:
    records = [r for r in read_metrics(straight / "metrics.jsonl") if r["phase"] == "val"]
    selftrain = [r for r in records if r["train_phase"] == "selftrain"]
    # only the final phase scores the extra split
    assert all("test" in r["also"] for r in selftrain)
    assert not any("also" in r for r in records if r["train_phase"] == "pretrain")
    # each scored split's seconds, within the time the record took since the one before it
    assert all(set(r["seconds"]) == {"val", "test"} for r in selftrain)
    assert all(set(r["seconds"]) == {"val"} for r in records if r["train_phase"] == "pretrain")
    logged = read_metrics(straight / "metrics.jsonl")
    for before, record in itertools.pairwise(logged):
        if record["phase"] == "val":
            spent = sum(record["seconds"].values())
            assert 0 < spent <= record["time"] - before["time"] + 2e-3  # times kept to 1 ms
    scores = [r["also"]["test"] for r in selftrain]
    best = selftrain[scores.index(max(scores))]  # the first of equal maxima
    saved = load_checkpoint(straight / "checkpoints/best-test.pt")
    assert (saved["kind"], saved["split"], saved["phase"]) == ("best-test", "test", "selftrain")
    assert (saved["iter"], saved["score"]) == (best["iter"], best["also"]["test"])
    # the saved weights give that score again on the test cases
    model, config = load_model_for_inference(straight / "checkpoints/best-test.pt")
    dataset = PreparedDataset(synthetic)
    validator = Validator(dataset, dataset.splits.resolve(None)["test"],
                          patch_size=config.data.patch_size, stride=config.validation.stride,
                          num_classes=dataset.num_classes, device=torch.device("cpu"))
    assert validator.evaluate(model).dice == pytest.approx(saved["score"], abs=1e-6)
    # best.pt is still chosen on val, and run.json records both selections
    assert load_checkpoint(straight / "checkpoints/best.pt")["split"] == "val"
    info = json.loads((straight / "run.json").read_text())
    assert info["also_best"] == {"test": {"score": saved["score"], "iter": saved["iter"]}}


def test_interrupted_run_keeps_the_same_best_test(synthetic: Path, straight: Path,
                                                  tmp_path: Path) -> None:
    def stop(event: ProgressEvent) -> None:
        if event.kind == "step" and event.phase == "selftrain" and event.iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(synthetic, tmp_path / "b"), progress=stop)
    resume(tmp_path / "b")
    a = load_checkpoint(straight / "checkpoints/best-test.pt")
    b = load_checkpoint(tmp_path / "b/checkpoints/best-test.pt")
    assert (a["iter"], a["score"]) == (b["iter"], b["score"])
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize(("changes", "message"), [
    ({"validation__also_select_on": ["val"]}, "repeats select_on"),
    ({"validation__also_select_on": ["test", "test"]}, "names a split twice"),
])
def test_contradictory_selections_are_refused(synthetic: Path, tmp_path: Path,
                                              changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(synthetic, tmp_path / "run", **changes)


def test_predict_and_compare_take_best_test(straight: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hco_cli.cli.app import app

    runner = CliRunner()
    out = runner.invoke(app, ["predict", str(straight), "--checkpoint", "best-test",
                              "--split", "test", "--evaluate"])
    assert out.exit_code == 0, out.output
    summary = json.loads((straight / "eval/best-test/summary.json").read_text())
    assert summary["n"]["1"]["dice"] == 2  # both test cases
    out = runner.invoke(app, ["compare", f"a={straight}", f"b={straight}",
                              "--checkpoint", "best-test"], env={"COLUMNS": "100"})
    assert out.exit_code == 0, out.output
    assert "not a held-out result" in out.output
    missing = runner.invoke(app, ["compare", f"a={straight}", f"b={straight}",
                                  "--checkpoint", "best-val"])
    assert missing.exit_code == 1
    assert "no 'best-val' evaluation" in missing.output
