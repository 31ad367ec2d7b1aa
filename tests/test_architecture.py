"""The package's shape, checked: the layer contract in pyproject.toml, no hco_cli import hidden
inside a function outside the CLI, and a CLI that starts without torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hco_cli"
# Modules that bind an optional heavy dependency and so are imported where they are needed.
OPTIONAL = {"hco_cli.optim.triton_step"}  # triton


def test_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers (cli > workflows > training > inference > evaluation > runs > planning > config >
    ssl > models|optim|data|ops > base > errors) and no cycles between sibling modules."""
    try:  # the dev extra; absent on the GPU image, whose GPU tests collect this folder too
        from importlinter.cli import lint_imports
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True,
                        no_logo=True) == 0


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every hco_cli import inside a function body of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                names = [inner.module] + [f"{inner.module}.{a.name}" for a in inner.names]
            elif isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            else:
                continue
            ours = [n for n in names if n.startswith("hco_cli")]
            if ours and not any(n in OPTIONAL for n in ours):
                found.append((inner.lineno, ours[0]))
    return found


def test_no_package_import_inside_functions() -> None:
    """Only the CLI defers its library imports (to start fast); nothing else hides a cycle."""
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.parent.parts[-1:]
                 for line, module in _function_imports(path)]
    assert offenders == []


def _loaded_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # After a marker line: what the code printed before it (a help text that names torch, say)
    # is not a module.
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                          "print('\\n@modules@'); print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, encoding="utf-8", env=env, check=True,
                         cwd=ROOT)
    return set(out.stdout.rpartition("@modules@")[2].split())


HEAVY = {"torch", "triton", "cupy"}


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["compare", "--help"],
                                  ["prepare", "--help"], ["train", "--help"],
                                  ["sweep", "--help"], ["plan", "--help"]])
def test_help_loads_no_torch(argv: list[str]) -> None:
    code = ("from hco_cli.cli.app import app\n"
            f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass")
    assert _loaded_after(code) & HEAVY == set()


def test_evaluate_compare_prepare_load_no_torch() -> None:
    """What `hco evaluate`, `hco compare` and `hco prepare` import when they run."""
    code = ("import hco_cli.cli.app\n"
            "import hco_cli.evaluation.evaluate, hco_cli.evaluation.report\n"
            "import hco_cli.evaluation.compare, hco_cli.evaluation.compare_tables\n"
            "import hco_cli.evaluation.dynamics, hco_cli.evaluation.plots\n"
            "import hco_cli.evaluation.curves, hco_cli.evaluation.saved_results\n"
            "import hco_cli.data.prepare, hco_cli.data.nnunet\n"
            "import hco_cli.workflows.sweep_status\n")
    assert _loaded_after(code) & HEAVY == set()
