"""Planning rules on analytic cases: spacing, pooling per axis, patch search, UMIX blocks."""

from __future__ import annotations

import math

import pytest

from hco_cli.errors import DataError
from hco_cli.models.layout import DEFAULT_KERNELS, DEFAULT_STRIDES
from hco_cli.planning import rules


def test_target_spacing_is_the_median_per_axis_thick_axis_included() -> None:
    spacings = [(0.7, 0.7, 5.0), (1.5, 1.5, 10.0), (1.0, 1.0, 8.0), (0.9, 0.9, 6.0)]
    assert rules.target_spacing(spacings) == pytest.approx((0.95, 0.95, 7.0))
    with pytest.raises(DataError, match="no training cases"):
        rules.target_spacing([])


@pytest.mark.parametrize("patch", [(112, 112, 80), (64, 64, 48), (96, 96, 96), (160, 128, 48)])
def test_isotropic_data_gets_the_default_v_net(patch: tuple[int, int, int]) -> None:
    strides, kernels = rules.layout((0.625, 0.625, 0.625), patch)
    assert tuple(strides) == DEFAULT_STRIDES and tuple(kernels) == DEFAULT_KERNELS


def test_thick_axis_joins_pooling_once_the_others_caught_up() -> None:
    strides, kernels = rules.layout((0.8, 0.8, 6.0), (64, 64, 12))
    # 0.8 -> 1.6 -> 3.2: z (6 mm) is within 2x of 3.2 mm from the third scale on.
    assert strides == [(2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)]
    assert kernels == [(3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert rules.multiples(strides) == (16, 16, 4)


def test_pooling_stops_where_fewer_than_three_voxels_would_remain() -> None:
    strides, _ = rules.layout((1.0, 1.0, 1.0), (64, 64, 8))
    assert [s[2] for s in strides] == [2, 1, 1, 1]  # 8 -> 4; 4 / 2 < 3
    strides, _ = rules.layout((1.0, 1.0, 1.0), (64, 64, 10))
    assert [s[2] for s in strides] == [2, 1, 1, 1]  # 10 -> 5, odd: no further pooling


def test_data_cap_rounds_each_axis_down_to_its_pooling() -> None:
    assert rules.data_cap((0.8, 0.8, 6.0), (70.0, 71.0, 12.0)) == (64, 64, 12)
    assert rules.data_cap((0.625,) * 3, (190.5, 142.0, 88.0)) == (176, 128, 80)
    assert rules.data_cap((1.0,) * 3, (40.0, 40.0, 7.0)) == (40, 40, 6)  # 7: one pooling


def test_patch_shrinks_the_longest_axis_in_mm_first() -> None:
    seen: list[tuple[int, int, int]] = []

    def fits(patch: tuple[int, int, int], layout: rules.Layout) -> bool:
        seen.append(patch)
        return math.prod(patch) <= 112 * 112 * 80

    patch, (strides, _) = rules.plan_patch((0.625,) * 3, (190.5, 142.0, 88.0), fits)
    assert patch == (112, 112, 80) and tuple(strides) == DEFAULT_STRIDES
    assert seen == [(176, 128, 80), (160, 128, 80), (144, 128, 80), (128, 128, 80),
                    (128, 112, 80), (112, 112, 80)]


def test_patch_search_drops_a_pooling_to_go_below_three_bottleneck_voxels() -> None:
    patch, (strides, _) = rules.plan_patch((1.0, 1.0, 1.0), (48.0, 48.0, 48.0),
                                           lambda p, _: p[0] <= 40)
    assert patch[0] == 40 and rules.multiples(strides)[0] == 8
    with pytest.raises(DataError, match="no patch fits"):
        rules.plan_patch((1.0, 1.0, 1.0), (48.0, 48.0, 48.0), lambda p, _: False)


def test_no_axis_shrinks_below_sixteen_or_its_whole_extent() -> None:
    tried: list[tuple[int, int, int]] = []

    def never(patch: tuple[int, int, int], layout: rules.Layout) -> bool:
        tried.append(patch)
        return False

    with pytest.raises(DataError):
        rules.plan_patch((0.8, 0.8, 6.0), (64.0, 64.0, 12.0), never)
    assert all(p[2] == 12 for p in tried)  # thick-slice scans keep every slice
    assert tried[-1] == (16, 16, 12)


@pytest.mark.parametrize(("patch", "blocks"), [
    ((112, 112, 80), (8, 8, 8)), ((64, 64, 12), (8, 8, 6)), ((48, 64, 10), (8, 8, 5)),
])
def test_umix_blocks_divide_the_patch(patch: tuple[int, int, int],
                                      blocks: tuple[int, int, int]) -> None:
    assert rules.umix_blocks(patch) == blocks
