"""The check both README-table scripts' tests make: the committed README holds what the script
gives on the committed results."""

from __future__ import annotations

from hco_cli.io_utils import between_markers
from tests.file_modules import ROOT


def assert_readme_holds(begin: str, end: str, table: str, command: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert between_markers(readme, begin, end, table) == readme, (
        f"README.md's table between {begin} and {end} is stale: {command}")
