"""Multi-node training as torchrun starts it: two "nodes" on localhost, one gloo process each.

Each node is its own ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` agent, as
``srun`` would start one per node on a cluster; they meet at a c10d rendezvous on localhost.
With every rank on rank 0's random streams the run must equal a one-process run, as the
spawned two-process tests assert (the gradients are averaged, the weights stay identical).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hco_cli.runs.checkpoint import load_checkpoint
from hco_cli.training.distributed import SAME_STREAMS_ENV
from hco_cli.training.entry import train
from hco_cli.training.logging import read_metrics
from tests.training.test_distributed import _networks, synthetic, tiny_config  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun_two_nodes(config: Path, logs: Path) -> list[int]:
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "hco-two-nodes",
               "-m", "hco_cli", "train", "--config", str(config)]
    env = {**os.environ, SAME_STREAMS_ENV: "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    nodes = []
    for node in range(2):
        with (logs / f"node{node}.log").open("w") as log:
            nodes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT))
    try:
        return [p.wait(timeout=240) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_two_torchrun_nodes_equal_one_process(synthetic: Path, tmp_path: Path) -> None:  # noqa: F811
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each node; and no threads spinning on a loaded machine
    try:
        one = train(tiny_config(synthetic, tmp_path / "one", processes=1))
    finally:
        torch.set_num_threads(threads)
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps(tiny_config(synthetic, tmp_path / "two", processes=1)
                                 .model_dump(mode="json")), encoding="utf-8")
    codes = _torchrun_two_nodes(config, tmp_path)
    logs = [(tmp_path / f"node{n}.log").read_text(encoding="utf-8", errors="replace")
            for n in range(2)]
    assert codes == [0, 0], logs[0][-3000:]
    assert sorted("training finished" in log for log in logs) == [False, True]  # rank 0 alone
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["processes"] == 2 and info["finished"] is True
    assert info["best"]["score"] == one.best_dice
    last = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert last["processes"] == 2 and len(last["replicas"]) == 2
    first, second = last["replicas"]
    assert first["fingerprint"] == second["fingerprint"]  # the two nodes hold one model
    ta = _networks(load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt"))
    tb = _networks(last)
    assert ta.keys() == tb.keys() and any(k.startswith("teacher/") for k in ta)
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-6, atol=1e-7, msg=key)
    la = [r["loss_l"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "loss_l" in r]
    lb = [r["loss_l"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "loss_l" in r]
    assert len(lb) == 4 and la == pytest.approx(lb, rel=1e-6)


def _wait_for(path: Path, text: str, agent: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.poll() is None:
        if path.is_file() and text in path.read_text(encoding="utf-8", errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never reached {path}")


@pytest.mark.slow  # 46 s: two torchrun launches of two gloo processes
def test_a_signal_to_torchrun_stops_every_rank_at_one_iteration_with_a_checkpoint(
        synthetic: Path, tmp_path: Path) -> None:  # noqa: F811
    """SIGTERM to the torchrun agent (a terminal's Ctrl-C reaches only it too: its workers
    have sessions of their own), which passes it on to both workers: they agree at the next
    log_every boundary and save last.pt there (torchrun reports its own SignalException);
    the same torchrun line with --resume then finishes the run from it."""
    raw = tiny_config(synthetic, tmp_path / "run", processes=1).model_dump(mode="json")
    raw["framework"].update(selftrain_iterations=40)
    raw.update(checkpoint_every=1000, log_every=2)
    raw["validation"]["every"] = 1000
    config = tmp_path / "long.yaml"
    config.write_text(json.dumps(raw), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "hco_cli", "train"]
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen([*base, "--config", str(config)], env=env, cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(tmp_path / "run" / "metrics.jsonl", '"iter": 8', agent, timeout=180)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
    text = log.read_text(encoding="utf-8", errors="replace")
    assert code != 0, text[-3000:]
    assert "SIGTERM: stopping within 2 iterations" in text, text[-3000:]
    assert "error: interrupted; continue from the last checkpoint" in text  # rank 0's line
    assert text.count("error: ") == 1  # rank 1 stops without a word
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    stopped_at = saved["global_iter"]
    assert 8 <= stopped_at < 41 and stopped_at % 2 == 1  # 1 pre-training + an even count
    assert len(saved["replicas"]) == 2
    steps = [r["iter"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["phase"] != "val"]
    assert steps[-1] == stopped_at
    with log.open("w") as out:
        resumed = subprocess.run([*base, "--resume", str(tmp_path / "run")], env=env, cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT, timeout=400)
    assert resumed.returncode == 0, log.read_text(encoding="utf-8", errors="replace")[-3000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert info["finished"] is True
    steps = [r["iter"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["phase"] != "val"]
    assert steps == list(range(1, 42))
