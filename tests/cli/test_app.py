"""The root command: help, version, and the one-line error contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import typer
from typer.testing import CliRunner

from hco_cli import __version__, processes
from hco_cli.cli import evaluate as evaluate_cli
from hco_cli.cli import plan as plan_cli
from hco_cli.cli.app import app
from hco_cli.cli.common import handle_errors
from hco_cli.cli.train import PRESET_NAMES
from hco_cli.errors import DataError
from hco_cli.evaluation import metrics
from hco_cli.planning import planner
from hco_cli.training.presets import PRESETS

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"hco {__version__}"


def test_help_lists_description() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Hierarchical Cautious" in result.stdout


def test_handle_errors_prints_one_line_and_exits_1() -> None:
    demo = typer.Typer()

    @demo.command()
    @handle_errors
    def boom(name: str = "x") -> None:
        raise DataError(f"case {name}: label file missing " + "x" * 150)

    result = runner.invoke(demo, ["--name", "abc"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: case abc: label file missing")
    assert "Traceback" not in result.output


def test_train_help_names_every_preset() -> None:
    """`hco train --help` lists the presets without importing them (that would load torch)."""
    assert tuple(PRESETS) == PRESET_NAMES


def test_evaluate_empty_choices_match_metrics() -> None:
    assert get_args(evaluate_cli.EmptyPolicy) == get_args(metrics.EmptyPolicy)


def test_plan_help_names_every_preset() -> None:
    assert tuple(planner.PRESETS) == plan_cli.PRESETS


def test_exit_is_quiet_after_torch_and_triton_loaded() -> None:
    """main() freezes the collector at exit only without torch: with Triton's nanobind
    extension loaded (compile, the fused kernels), frozen objects made it print ~27 "leaked"
    lines as the process ended."""
    pytest.importorskip("triton")
    code = ("import sys; sys.argv = ['hco', '--version']\n"
            "import torch, triton._C.libtriton\n"
            "from hco_cli.cli.app import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == f"hco {__version__}"
    assert "leaked" not in done.stderr, done.stderr[-500:]


def test_exit_with_torch_loaded_joins_threads_runs_atexit_and_keeps_the_status(
        tmp_path: Path) -> None:
    """With torch loaded, main() ends the process by os._exit after what the interpreter
    would do before its teardown: a thread that is not a daemon finishes its work, atexit
    handlers run, the output is flushed, and the exit status is the command's."""
    code = ("import atexit, sys, threading, time\n"
            "from pathlib import Path\n"
            "import torch\n"
            "out = Path(sys.argv[1])\n"
            "def late():\n"
            "    time.sleep(1.5)\n"
            "    (out / 'thread').write_text('done')\n"
            "threading.Thread(target=late).start()\n"
            "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
            "sys.argv = ['hco'] + sys.argv[2:]\n"
            "from hco_cli.cli.app import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == f"hco {__version__}"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
    # a refused command keeps its status and its one line
    bad = subprocess.run([sys.executable, "-c", code, str(tmp_path), "predict",
                          str(tmp_path / "missing-run")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing-run'} does not exist (expected a run folder or a .pt "
        "checkpoint)"]


def test_a_command_watches_the_parent_a_sweep_names(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """Every hco command reads PARENT_ENV once (hco sweep sets it for its runs) and asks to be
    interrupted when that process dies; without it, nothing is asked."""
    asked: list[tuple[int, str | None]] = []

    def record(sig: int, *, prctl: object) -> None:
        asked.append((sig, os.environ.pop(processes.PARENT_ENV, None)))

    monkeypatch.setattr(processes, "stop_with_parent_from_env", record)
    monkeypatch.setenv(processes.PARENT_ENV, "4242")
    assert runner.invoke(app, ["evaluate", str(tmp_path), str(tmp_path)]).exit_code != 0
    assert asked == [(signal.SIGINT, "4242")]
