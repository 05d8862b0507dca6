"""Comparisons at matched task loss (hf_ext.frontier): interpolation, overlap, the per-seed differences."""

import math

import pytest

from hf_ext.frontier import (
    compare_at_matched_loss,
    compare_on_reference_curve,
    format_comparison,
    interpolate,
    matched_levels,
)


def test_interpolate_is_linear_between_runs_and_refuses_to_extrapolate():
    curve = [(0.6, 0.1), (0.4, 0.5), (0.5, 0.3)]  # any order
    assert interpolate(curve, 0.45) == pytest.approx(0.4)
    assert interpolate(curve, 0.6) == pytest.approx(0.1)
    assert math.isnan(interpolate(curve, 0.39)) and math.isnan(interpolate(curve, 0.61))
    assert interpolate([(0.5, 1.0), (0.5, 3.0), (0.7, 5.0)], 0.6) == pytest.approx(3.5)  # ties averaged


def test_levels_lie_inside_the_range_every_curve_reached():
    assert matched_levels([[(0.3, 0), (0.7, 0)], [(0.4, 0), (0.9, 0)]], 3) == pytest.approx([0.475, 0.55, 0.625])
    assert matched_levels([[(0.3, 0), (0.4, 0)], [(0.5, 0), (0.9, 0)]]) == []


def test_a_constant_offset_at_equal_loss_is_found_whatever_the_learning_rates():
    # other drifts 0.1 more than reference at every loss, though its runs sit at other losses
    reference = {s: [(0.7, 0.0 + s / 100), (0.4, 0.3 + s / 100)] for s in range(5)}
    other = {s: [(0.65, 0.15 + s / 100), (0.45, 0.35 + s / 100)] for s in range(5)}
    result = compare_at_matched_loss(reference, other, levels=2)
    assert result["seeds"] == [0, 1, 2, 3, 4]
    for level in result["levels"]:
        assert level["differences"] == pytest.approx([0.1] * 5)
        assert level["mean"] == pytest.approx(0.1) and level["resolution"] == pytest.approx(0, abs=1e-12)
        assert level["p_two_sided"] == pytest.approx(2 / 32) == level["min_p"]


def test_noise_gives_an_interval_across_zero():
    reference = {s: [(0.7, 0.0), (0.4, 0.3)] for s in range(4)}
    other = {s: [(0.7, 0.0 + d), (0.4, 0.3 + d)] for s, d in enumerate([0.05, -0.04, 0.03, -0.05])}
    (level,) = compare_at_matched_loss(reference, other, levels=1)["levels"]
    assert level["low"] < 0 < level["high"] and level["p_two_sided"] > 0.5
    assert level["resolution"] == pytest.approx((level["high"] - level["low"]) / 2)


@pytest.mark.parametrize(
    "reference, other, reason",
    [
        ({1: [(0.5, 0), (0.4, 1)]}, {1: [(0.5, 0), (0.4, 1)]}, "needs at least 2 seeds with both arms, found 1"),
        ({1: [(0.5, 0)], 2: [(0.5, 0)]}, {1: [(0.5, 0)], 2: [(0.5, 0)]}, "needs at least 2 learning rates"),
        (
            {1: [(0.5, 0), (0.4, 1)], 2: [(0.5, 0), (0.4, 1)]},
            {1: [(0.3, 0), (0.2, 1)], 2: [(0.3, 0), (0.2, 1)]},
            "do not overlap: widen the learning-rate grids",
        ),
    ],
)
def test_what_cannot_be_compared_says_why(reference, other, reason):
    result = compare_at_matched_loss(reference, other)
    assert reason in result["skipped"]
    assert reason in format_comparison(result, "full", "lora", "drift")[0]


def test_runs_past_the_lowest_loss_are_off_the_frontier():
    from hf_ext.frontier import past_lowest_loss

    # learning rates out of order; the lowest loss at 2e-3: the larger 4e-3 and 8e-3 overshoot
    runs = [(4e-3, 0.55), (1e-3, 0.6), (2e-3, 0.5), (8e-3, 0.7)]
    assert past_lowest_loss(runs) == [0, 3]
    assert past_lowest_loss([(1e-3, 0.6), (2e-3, 0.5)]) == [] and past_lowest_loss([]) == []


def test_each_run_is_read_on_its_own_seeds_reference_curve_without_a_common_range():
    # the seeds' loss ranges do not overlap (no common levels), yet every seed compares within itself
    reference = {1: [(0.7, 0.8), (0.5, 0.4)], 2: [(0.9, 0.9), (0.8, 0.7)], 3: [(0.3, 0.5), (0.2, 0.1)]}
    other = {1: [(0.68, 0.95), (0.52, 0.70), (0.40, 0.0)], 2: [(0.85, 0.9), (0.95, 1.0)], 3: [(0.1, 0.5), (0.0, 0.6)]}
    assert compare_at_matched_loss(reference, other)["skipped"].startswith("the arms' task losses do not overlap")
    result = compare_on_reference_curve(reference, other)
    # seed 1: 0.95 - 0.76 and 0.70 - 0.44 (0.40 lies outside its reference); seed 2: 0.9 - 0.8 (0.95 outside);
    # seed 3 wholly outside
    assert result["seeds"] == [1, 2] and result["outside"] == [3] and result["runs"] == [2, 1]
    assert result["differences"] == pytest.approx([(0.19 + 0.26) / 2, 0.1])
    assert result["mean"] == pytest.approx(0.1625) and result["min_p"] == pytest.approx(0.5)
    assert result["resolution"] == pytest.approx((result["high"] - result["low"]) / 2)
    one_seed = compare_on_reference_curve(reference, {1: other[1], 3: other[3]})  # seed 3 adds nothing
    assert one_seed["skipped"] == "1 seed(s) have a run inside the reference's task-loss range, needs 2"
