"""The preprocessing plan refuses numbers that would spoil every case, hand-written ones too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from hco_cli.data.labels import build_label_map
from hco_cli.data.plan import (
    CT_WINDOW,
    DataPlan,
    PreprocessPlan,
    ct_window_problem,
    read_plan,
    spacing_problem,
    write_plan,
)
from hco_cli.errors import DataError

BAD_WINDOWS = [(5.0, 5.0), (275.0, -125.0), (math.nan, 1.0), (0.0, math.inf)]
BAD_SPACINGS = [(math.nan, 1.0, 1.0), (1.0, math.inf, 1.0), (1.0, 1.0, 0.0), (-1.0, 1.0, 1.0)]


@pytest.mark.parametrize("window", BAD_WINDOWS)
def test_an_empty_reversed_or_non_finite_ct_window_is_refused(
        window: tuple[float, float]) -> None:
    assert ct_window_problem(window) is not None
    with pytest.raises(ValidationError, match="ct_window"):
        PreprocessPlan(norm="ct", ct_window=window)


@pytest.mark.parametrize("spacing", BAD_SPACINGS)
def test_a_non_finite_or_non_positive_spacing_is_refused(
        spacing: tuple[float, float, float]) -> None:
    assert spacing_problem(spacing) == "spacings must be finite numbers above 0"
    with pytest.raises(ValidationError, match="spacing"):
        PreprocessPlan(spacing=spacing)


def test_usable_numbers_pass() -> None:
    assert ct_window_problem(CT_WINDOW) is None and ct_window_problem((-1000.0, 3000.0)) is None
    assert spacing_problem((0.8, 0.8, 2.5)) is None
    plan = PreprocessPlan(spacing=(0.8, 0.8, 2.5), norm="ct", ct_window=(-1000.0, 3000.0))
    assert plan.ct_window == (-1000.0, 3000.0) and plan.spacing == (0.8, 0.8, 2.5)
    assert PreprocessPlan().ct_window == (-125.0, 275.0)


def test_a_hand_edited_plans_json_with_a_reversed_window_is_one_line(tmp_path: Path) -> None:
    plan = DataPlan(preprocess=PreprocessPlan(norm="ct", labels=build_label_map([0, 1])),
                    channels=1, spacing_min=(1.0, 1.0, 1.0), spacing_max=(1.0, 1.0, 1.0),
                    spacing_median=(1.0, 1.0, 1.0), source="test")
    path = write_plan(tmp_path, plan)
    assert read_plan(tmp_path).preprocess.ct_window == (-125.0, 275.0)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["preprocess"]["ct_window"] = [275.0, -125.0]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=r"invalid field 'preprocess.ct_window': .*low bound "
                                        r"must come first") as caught:
        read_plan(tmp_path)
    assert "\n" not in str(caught.value)
