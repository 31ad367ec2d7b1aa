"""hco_cli.io_utils.json_safe: what strict JSON cannot hold becomes null, nothing else moves."""

from __future__ import annotations

import json
import math

from hco_cli.io_utils import json_safe


def test_nan_and_infinities_become_none_at_any_depth() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": 0.5, "e": None},
             "f": "nan", "g": 3}
    out = json_safe(value)
    assert out == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": 0.5, "e": None},
                   "f": "nan", "g": 3}
    json.dumps(out, allow_nan=False)  # strict JSON now
    assert value["a"] is not None and math.isnan(value["a"])  # the input is left as it was
