"""hco_cli.io_utils: json_safe (what strict JSON cannot hold becomes null) and between_markers."""

from __future__ import annotations

import json
import math
import re

import pytest

from hco_cli.io_utils import between_markers, json_safe


def test_nan_and_infinities_become_none_at_any_depth() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": 0.5, "e": None},
             "f": "nan", "g": 3}
    out = json_safe(value)
    assert out == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": 0.5, "e": None},
                   "f": "nan", "g": 3}
    json.dumps(out, allow_nan=False)  # strict JSON now
    assert value["a"] is not None and math.isnan(value["a"])  # the input is left as it was


def test_between_markers_replaces_only_the_block() -> None:
    text = "intro\n<!-- b -->\nold\nrows\n<!-- e -->\nafter <!-- b -->\n"
    assert between_markers(text, "<!-- b -->", "<!-- e -->", "new\n") == (
        "intro\n<!-- b -->\nnew\n<!-- e -->\nafter <!-- b -->\n")
    for bad in ("no markers\n", "<!-- e -->\n<!-- b -->\n"):
        with pytest.raises(ValueError, match=re.escape("no <!-- b --> ... <!-- e --> block")):
            between_markers(bad, "<!-- b -->", "<!-- e -->", "new\n")
