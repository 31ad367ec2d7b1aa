"""Loading a benchmark script (benchmarks/ is not a package) as a module for its tests."""

from __future__ import annotations

from types import ModuleType

from tests.file_modules import ROOT, load_file

__all__ = ["ROOT", "load_benchmark"]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as module ``bench_<name>``."""
    return load_file(f"benchmarks/{name}.py", f"bench_{name}")
