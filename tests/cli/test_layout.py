"""Output that a person reads at 80 columns, at 120, and in logs (not a terminal).

Numbers are never cut ("96.…" was what ``hco compare`` printed at 80 columns), arm names are
never cut (a legend maps short labels to long names), and the training bar keeps its times.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from hco_cli.cli.app import app
from hco_cli.cli.compare import render
from hco_cli.cli.progress import Display, training_progress
from hco_cli.evaluation import compare_tables
from hco_cli.evaluation.compare import compare_runs
from hco_cli.evaluation.evaluate import CaseResult, EvaluationSummary, _aggregate
from hco_cli.evaluation.report import summary_table
from hco_cli.training.events import ProgressEvent
from tests.evaluation.compare_fixtures import cases, one_class, write_run

runner = CliRunner()
DICE = {"a": [0.9612, 0.95, 0.97, 0.93], "b": [0.9651, 0.96, 0.975, 0.94],
        "c": [0.9, 0.91, 0.92, 0.95]}
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


@pytest.fixture
def arms(tmp_path: Path) -> list[str]:
    """Three arms whose names are long paths (as a user gives them without NAME=)."""
    specs = []
    for name, dice in DICE.items():
        folder = f"experiments/la-bcp-8-labeled/{name}-seed-sweep-with-a-long-name"
        write_run(tmp_path, folder, optimizer=f"sgd-{name}", evals={
            "best": (cases(4), one_class(np.array(dice), hd95=np.array(dice) * 123.456))})
        specs.append(str(tmp_path / folder))
    return specs


def _text(width: int | None, tables: list[compare_tables.ReportTable],
          compact: list[compare_tables.ReportTable]) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width or 80, color_system=None)
    for table in render(tables, compact, console):
        console.print(table)
    return buffer.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_compare_tables_fit_and_cut_nothing(arms: list[str], width: int) -> None:
    result = compare_runs(arms)
    text = _text(width, compare_tables.comparison_tables(result),
                 compare_tables.comparison_tables(result, compact=True))
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for arm in result.arms:  # every mean (std) and every p-value whole, on one line
        for metric in ("dice", "hd95"):
            mean, std, _ = result.summary(arm, "1", metric)
            scale = 100 if metric == "dice" else 1
            assert f"{mean * scale:.2f} ({std * scale:.2f})" in text
    for record in result.records:
        assert compare_tables.fmt_p(record.result.p_wilcoxon) in text
    for label, arm in zip("ABC", result.arms, strict=True):  # the legend maps labels to names
        assert re.search(rf"^\s*{label}\s+{re.escape(arm.name[:30])}", text, re.M), text


def test_compare_in_a_log_keeps_the_paper_layout(arms: list[str]) -> None:
    """Not a terminal and no COLUMNS: one row per arm, full names, nothing cut."""
    result = runner.invoke(app, ["compare", *arms])
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout and "Optimizer" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "│ sgd-" in line]
    assert len(rows) == 3  # one line per arm: name, optimizer, the 4 means and 4 p-values
    assert all(len(re.findall(r"\d+\.\d\d \(\d+\.\d\d\)", row)) == 4 for row in rows)
    assert all("-seed-sweep-with-a-long-name │" in row for row in rows)


def test_evaluation_table_at_80_columns_cuts_no_number() -> None:
    results = [CaseResult(f"case{i}", {str(c): {"dice": 0.9612, "jaccard": 0.9253,
                                                "hd95": 123.456 + i, "asd": 12.345}
                                       for c in range(1, 9)}) for i in range(3)]
    summary = EvaluationSummary(cases=results, classes=list(range(1, 9)), spacing_unit="mm",
                                empty_policy="nan")
    _aggregate(summary)
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(summary_table(summary, title="t"))
    text = buffer.getvalue()
    assert "…" not in text and "96.12 (0.00)" in text and "124.46" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("width", [80, 120])
def test_training_bar_keeps_its_times(width: int) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=True, color_system=None)
    with training_progress(console) as bar:
        task = bar.add_task("selftrain", total=15000, completed=0,
                            info="L 0.3456 U 0.1234 val 0.8712 best 0.8800")
        bar.update(task, completed=1234)
        bar.refresh()
    last = [ANSI.sub("", line) for line in buffer.getvalue().splitlines() if "selftrain" in line]
    line = last[-1].strip()
    assert re.search(r"1234/15000 .*\d:\d\d:\d\d eta [-\d]:[-\d]{2}:[-\d]{2} L 0\.3456", line), line
    assert "0:…" not in line and len(line) <= width


def test_a_warning_prints_its_brackets() -> None:
    # a training warning naming a YAML list ("also_select_on: [test]") must not lose it to
    # rich's markup, which reads "[test]" as a style tag
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    err_console = Console(file=err, width=120, force_terminal=False)
    with training_progress(console, disable=True) as bar:
        Display(bar, console=console, err_console=err_console)(
            ProgressEvent("warning", message="also_select_on: [test] keeps best-test.pt"))
    assert err.getvalue().strip() == "warning: also_select_on: [test] keeps best-test.pt"
