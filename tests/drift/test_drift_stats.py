"""Tests of the drift statistics: paired sign-flip permutation tests and bootstrap intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hf_ext.drift.stats import PermutationResult, bootstrap_interval, paired_permutation_test


def _brute_force_p(a, b, reduction):
    diffs = [x - (1 - reduction) * y for x, y in zip(a, b)]
    observed = sum(diffs) / len(diffs)
    hits = 0
    for signs in itertools.product((1.0, -1.0), repeat=len(diffs)):
        if sum(s * d for s, d in zip(signs, diffs)) / len(diffs) <= observed + 1e-9:
            hits += 1
    return hits / 2 ** len(diffs)


@pytest.mark.parametrize("n", [5, 6])
@pytest.mark.parametrize("reduction", [0.0, 0.2])
def test_exact_p_matches_brute_force(n, reduction):
    rng = np.random.default_rng(n)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    result = paired_permutation_test(a, b, reduction=reduction)
    expected = _brute_force_p(a.tolist(), b.tolist(), reduction)
    assert 1 / 2**n < expected < 1.0
    assert result.p_value == pytest.approx(expected, abs=1e-12)
    assert result.statistic == pytest.approx(float(np.mean(a - (1 - reduction) * b)))
    assert result.reduction == reduction


def test_exact_flags_and_extreme_p_values():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    clearly_smaller = paired_permutation_test(a, a + 10.0)
    assert clearly_smaller.exact
    assert clearly_smaller.n == 5
    assert clearly_smaller.num_permutations == 32
    assert clearly_smaller.min_p_value == 1 / 32
    assert clearly_smaller.p_value == 1 / 32

    identical = paired_permutation_test(a, a.clone())
    assert identical.statistic == 0.0
    assert identical.p_value == 1.0


def test_monte_carlo_agrees_with_exact_and_is_reproducible():
    rng = np.random.default_rng(10)
    a = rng.normal(size=10)
    b = rng.normal(size=10)
    exact = paired_permutation_test(a, b)
    assert exact.exact
    monte_carlo = paired_permutation_test(a, b, max_exact=16, samples=20_000, seed=3)
    assert not monte_carlo.exact
    assert monte_carlo.num_permutations == 20_000
    assert monte_carlo.min_p_value == 1 / 20_001
    assert 0.01 < exact.p_value < 0.99
    assert abs(monte_carlo.p_value - exact.p_value) < 0.01
    assert paired_permutation_test(a, b, max_exact=16, samples=20_000, seed=3) == monte_carlo


def test_reduction_shifts_the_null():
    b = torch.linspace(1.0, 3.0, 10, dtype=torch.float64)
    a = 0.9 * b
    plain = paired_permutation_test(a, b)
    assert plain.p_value == 1 / 2**10
    demanding = paired_permutation_test(a, b, reduction=0.2)
    assert demanding.statistic > 0
    assert demanding.p_value == 1.0


def test_to_dict_round_trips():
    result = paired_permutation_test([1.0, 2.0], [2.0, 3.0])
    assert PermutationResult(**result.to_dict()) == result


def test_bootstrap_interval_of_the_mean():
    values = torch.from_numpy(np.random.default_rng(0).normal(5.0, 2.0, size=400))

    def mean_of(indices):
        return float(values[indices].mean())

    low, high = bootstrap_interval(mean_of, 400, samples=2000, seed=1)
    assert low < float(values.mean()) < high
    expected_width = 2 * 1.96 * float(values.std()) / math.sqrt(400)
    assert abs((high - low) / expected_width - 1) < 0.25
    assert bootstrap_interval(mean_of, 400, samples=2000, seed=1) == (low, high)
    assert bootstrap_interval(mean_of, 400, samples=2000, seed=2) != (low, high)


def test_bootstrap_interval_skips_a_minority_of_non_finite_values():
    calls = iter(range(100))

    def sometimes_nan(indices):
        return math.nan if next(calls) % 4 == 0 else float(indices.double().mean())

    low, high = bootstrap_interval(sometimes_nan, 10, samples=100)
    assert math.isfinite(low) and math.isfinite(high) and low <= high

    with pytest.raises(ValueError, match="finite on at least half"):
        bootstrap_interval(lambda indices: math.inf, 10, samples=10)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ([1.0, 2.0], [1.0], {}, "same length"),
        ([], [], {}, "at least one value"),
        ([1.0, math.nan], [1.0, 2.0], {}, "finite"),
        ([1.0, 2.0], [1.0, 2.0], {"reduction": 1.0}, "reduction"),
        ([[1.0, 2.0]], [[1.0, 2.0]], {}, "1-D"),
    ],
)
def test_permutation_test_rejects_bad_input(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_permutation_test(a, b, **kwargs)


@pytest.mark.parametrize(
    ("num_groups", "kwargs", "message"),
    [(1, {}, "num_groups"), (10, {"samples": 0}, "samples"), (10, {"confidence": 1.0}, "confidence")],
)
def test_bootstrap_interval_rejects_bad_input(num_groups, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(lambda indices: 0.0, num_groups, **kwargs)


def test_bootstrap_basic_interval_reflects_the_percentiles_around_the_estimate():
    sample = torch.linspace(0, 1, 50) ** 3

    def statistic(indices):
        return float(sample[indices].max())  # biased downward under resampling

    low, high = bootstrap_interval(statistic, 50, samples=200, seed=3)
    basic = bootstrap_interval(statistic, 50, samples=200, seed=3, estimate=1.0)
    assert basic == pytest.approx((2 - high, 2 - low))
    assert high <= 1.0 <= basic[1]
