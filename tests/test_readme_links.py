"""README.md and DEVELOPERS.md: every in-page link names a heading, and every relative link a
file or folder of the repository (the READMEs are long; a renamed section or moved result must
not leave a dead link)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (hyphens and
    underscores kept), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_slug_follows_githubs_rule() -> None:
    assert slug("Quick tour (CPU, no download)") == "quick-tour-cpu-no-download"
    assert slug("Which HCO? The `sgd-co` arm") == "which-hco-the-sgd-co-arm"
    assert slug("Study 1: BCP on Left Atrium, 2K + 15K") == "study-1-bcp-on-left-atrium-2k--15k"


@pytest.mark.parametrize("name", ["README.md", "DEVELOPERS.md"])
def test_links_resolve(name: str) -> None:
    text = FENCE.sub("", (ROOT / name).read_text(encoding="utf-8"))
    anchors = {slug(h) for h in HEADING.findall(text)}
    dead = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in anchors:
                dead.append(target)
        elif not (ROOT / path).exists():
            dead.append(target)
    assert dead == [], f"{name}: dead links {dead}"
