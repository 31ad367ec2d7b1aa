"""Import a file of the repository that is not in a package (benchmarks/, scripts/) as a module,
for the tests of that file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_file(relative: str, module_name: str) -> ModuleType:
    """``ROOT/relative`` as module ``module_name``, registered in ``sys.modules`` (where its
    dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
