"""The shared statistics (``hf_ext.stats``) reproduce the numbers of the code they replaced.

The tables below were computed, before the move onto ``scipy.stats``, by the hand-written statistics of
``hf_ext/drift/stats.py`` (paired permutation test, group bootstrap interval), ``hf_ext/heads/bootstrap.py``
(seed bootstrap, percentile interval) and ``hf_ext/warp/summary.py`` (Student-t interval) on these inputs.
Every number is reproduced exactly, except the group bootstrap bounds: its percentile was interpolated by hand
at ``(1 - confidence) / 2``, now by numpy at the ``50 -+ 50 confidence`` percentiles, which moves a bound by a
few ulp (``mean_n40_confidence_90`` and ``nan_every_fourth`` by one); the draws are the same.
"""

import math

import numpy as np
import pytest
import scipy
import torch

from hf_ext import stats
from hf_ext.drift import stats as drift_stats
from hf_ext.heads.bootstrap import mean_over_seeds_interval, percentile_interval
from hf_ext.warp.summary import mean_interval

# A right-skewed sample, shared by the max bootstrap cases (basic and percentile intervals).
SKEWED = [
    0.0,
    8e-06,
    6.8e-05,
    0.000229,
    0.000544,
    0.001062,
    0.001836,
    0.002915,
    0.004352,
    0.006196,
    0.0085,
    0.011313,
    0.014688,
    0.018674,
    0.023324,
    0.028687,
    0.034815,
    0.04176,
    0.049571,
    0.058301,
    0.067999,
    0.078717,
    0.090507,
    0.103418,
    0.117502,
    0.13281,
    0.149394,
    0.167303,
    0.186589,
    0.207303,
    0.229496,
    0.253219,
    0.278523,
    0.305459,
    0.334078,
    0.364431,
    0.396569,
    0.430543,
    0.466404,
    0.504203,
    0.543991,
    0.585819,
    0.629738,
    0.675798,
    0.724052,
    0.77455,
    0.827342,
    0.882481,
    0.940016,
    1.0,
]

PERMUTATION = {  # name: (a, b, keyword arguments, (statistic, p_value, exact, num_permutations, min_p_value))
    "n1_positive": ([2.0], [1.0], {}, (1.0, 1.0, True, 2, 0.5)),
    "n1_negative": ([1.0], [2.0], {}, (-1.0, 0.5, True, 2, 0.5)),
    "n2": ([1.0, 2.0], [2.0, 3.0], {}, (-1.0, 0.25, True, 4, 0.25)),
    "n2_mixed": ([1.0, 3.0], [2.0, 2.5], {}, (-0.25, 0.5, True, 4, 0.25)),
    "all_equal": ([0.3, 0.7, 1.1, 0.2], [0.3, 0.7, 1.1, 0.2], {}, (0.0, 1.0, True, 16, 0.0625)),
    "constant_shift": (
        [1.0, 2.0, 3.0, 4.0, 5.0],
        [11.0, 12.0, 13.0, 14.0, 15.0],
        {},
        (-10.0, 0.03125, True, 32, 0.03125),
    ),
    "integer_ties": (
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
        {},
        (1.5, 0.96875, True, 64, 0.015625),
    ),
    "decimal_ties": ([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.4, 0.3, 0.1, 0.5], {}, (0.0, 0.625, True, 32, 0.03125)),
    "decimal_ties_reduction": (
        [0.1, 0.2, 0.3, 0.4, 0.5],
        [0.2, 0.4, 0.3, 0.1, 0.5],
        {"reduction": 0.5},
        (0.15, 1.0, True, 32, 0.03125),
    ),
    "scaled_linspace": (
        [0.9, 1.1, 1.3, 1.5, 1.7, 1.9000000000000001, 2.0999999999999996, 2.3, 2.5, 2.7],
        [
            1.0,
            1.2222222222222223,
            1.4444444444444444,
            1.6666666666666665,
            1.8888888888888888,
            2.111111111111111,
            2.333333333333333,
            2.5555555555555554,
            2.7777777777777777,
            3.0,
        ],
        {},
        (-0.19999999999999996, 0.0009765625, True, 1024, 0.0009765625),
    ),
    "scaled_linspace_reduction": (
        [0.9, 1.1, 1.3, 1.5, 1.7, 1.9000000000000001, 2.0999999999999996, 2.3, 2.5, 2.7],
        [
            1.0,
            1.2222222222222223,
            1.4444444444444444,
            1.6666666666666665,
            1.8888888888888888,
            2.111111111111111,
            2.333333333333333,
            2.5555555555555554,
            2.7777777777777777,
            3.0,
        ],
        {"reduction": 0.2},
        (0.19999999999999996, 1.0, True, 1024, 0.0009765625),
    ),
    "random_5": (
        [0.3456, 0.8216, 0.3304, -1.3032, 0.9054],
        [0.1891, -0.5227, -0.4131, -2.4415, 1.7997],
        {},
        (0.49766000000000005, 0.90625, True, 32, 0.03125),
    ),
    "random_6_reduction": (
        [4.0409, -0.5557, 2.4181, 1.4322, 1.5474, 1.7844],
        [1.8482, 2.3253, 4.1637, 3.1591, 0.8586, 2.4948],
        {"reduction": 0.2},
        (-0.2020766666666669, 0.359375, True, 64, 0.015625),
    ),
    "random_8": (
        [-0.8019, -1.3244, -0.2484, 0.4204, 1.136, 0.1097, -0.5526, -0.7848],
        [1.4531, 2.1765, -2.1533, 0.262, 1.4137, 1.7521, 1.0538, 1.8971],
        {},
        (-1.237625, 0.05078125, True, 256, 0.00390625),
    ),
    "random_12": (
        [0.0012, 0.2987, -0.2741, -0.8906, -0.4547, -0.9916, 0.0601, 1.3402, -0.4922, -0.6205, 0.4898, 0.3569],
        [-1.4383, -1.0366, -1.0611, -0.0516, -2.0126, 0.1111, -0.6572, 1.1936, 1.2568, 1.6923, 1.0675, 0.247],
        {},
        (-0.040641666666666694, 0.454833984375, True, 4096, 0.000244140625),
    ),
    "random_16_exact": (
        [
            -0.8028,
            0.2428,
            -1.6563,
            0.6561,
            1.1435,
            -0.4526,
            0.4305,
            0.2509,
            -0.3944,
            -0.8624,
            -2.0326,
            1.4104,
            -0.0476,
            2.5223,
            0.8262,
            0.2778,
        ],
        [
            -0.9033,
            -0.525,
            -0.5818,
            0.467,
            -0.0486,
            0.3265,
            1.043,
            1.0579,
            0.6752,
            -0.2508,
            -0.5549,
            -0.6148,
            -0.1439,
            0.1486,
            -0.7723,
            -0.9345,
        ],
        {},
        (0.19521875, 0.7391510009765625, True, 65536, 1.52587890625e-05),
    ),
    "random_10_sampled": (
        [0.0342, 1.3597, 1.2247, -0.5103, -0.298, -0.5274, 0.5697, -0.0561, 0.7469, -1.8473],
        [0.2932, 1.3461, 1.0416, 1.024, 1.9188, -0.9056, -0.327, -1.0207, 0.1922, 1.2988],
        {"max_exact": 16, "samples": 20000, "seed": 3},
        (-0.41653, 0.19589020548972552, False, 20000, 4.999750012499375e-05),
    ),
    "random_17_sampled": (
        [
            1.8268,
            -3.0783,
            0.9581,
            0.0696,
            1.3183,
            0.3856,
            1.8273,
            0.0317,
            -0.5162,
            0.5805,
            0.4321,
            -0.3568,
            -0.2473,
            0.7194,
            0.7043,
            -0.4939,
            -0.3677,
        ],
        [
            0.9955,
            -0.6795,
            -1.2735,
            -2.625,
            -0.0532,
            1.5476,
            0.3331,
            0.8118,
            1.3232,
            -0.5821,
            2.9523,
            -0.5769,
            0.6736,
            3.0396,
            0.1857,
            0.4143,
            -0.2119,
        ],
        {},
        (-0.14594705882352943, 0.35525644743552565, False, 100000, 9.99990000099999e-06),
    ),
    "random_30_sampled_reduction": (
        [
            -0.4309,
            0.0635,
            1.3939,
            0.4759,
            1.5256,
            1.8073,
            -0.4435,
            2.0171,
            0.4044,
            3.0941,
            1.7287,
            0.461,
            1.2015,
            1.215,
            1.3295,
            2.3933,
            1.5328,
            2.6606,
            1.6342,
            0.8223,
            -0.5244,
            -0.5605,
            1.2048,
            1.691,
            2.4433,
            0.3867,
            1.0778,
            0.187,
            0.5777,
            -1.2794,
        ],
        [
            0.9053,
            2.1308,
            2.5394,
            2.5309,
            3.3178,
            1.1148,
            2.0442,
            1.1338,
            0.0752,
            0.7961,
            1.6362,
            0.5848,
            1.3085,
            2.6203,
            2.0705,
            2.0723,
            1.8451,
            1.3247,
            -0.3677,
            2.4915,
            -0.0067,
            1.7161,
            1.3916,
            1.6373,
            1.7523,
            1.1662,
            2.401,
            0.2149,
            2.2919,
            -0.1919,
        ],
        {"reduction": 0.1, "samples": 5000, "seed": 7},
        (-0.33340600000000004, 0.0643871225754849, False, 5000, 0.0001999600079984003),
    ),
    "equal_with_reduction": (
        [12.0, -10.0, -3.0, -11.0, 12.0],
        [12.0, -10.0, -3.0, -11.0, 12.0],
        {"reduction": 0.1},
        (-1.7763568394002506e-16, 0.53125, True, 32, 0.03125),
    ),
    "near_zero_mean_ties": (
        [0.1, 0.1, -0.0, 0.1, 0.0, 0.1, 0.0, 0.0, -0.1, -0.30000000000000004],
        [-0.0, 2.0, -2.0, 1.0, -1.0, 0.0, -1.0, 0.0, -0.0, 1.0],
        {"reduction": 0.5},
        (-1.1102230246251566e-17, 0.513671875, True, 1024, 0.0009765625),
    ),
    "n2_sampled": (
        [1.0, 3.0],
        [2.0, 2.5],
        {"max_exact": 2, "samples": 1000, "seed": 1},
        (-0.25, 0.48951048951048953, False, 1000, 0.000999000999000999),
    ),
}
SAMPLE_40 = [  # a fixed sample of 40 values, shared by two bootstrap cases
    4.2807,
    7.4074,
    7.7937,
    5.6345,
    5.8283,
    4.0209,
    3.1718,
    3.1993,
    3.0031,
    6.8584,
    4.8874,
    5.2566,
    3.7201,
    2.8244,
    2.5961,
    3.3169,
    6.1983,
    5.0369,
    4.0865,
    4.5214,
    2.1453,
    7.4614,
    2.5672,
    5.0848,
    9.274,
    -0.1024,
    2.1861,
    3.5526,
    5.2331,
    1.5702,
    4.5294,
    4.9431,
    5.341,
    0.2233,
    6.2929,
    8.1937,
    5.8732,
    3.5538,
    3.7731,
    -0.2926,
]

GROUP_BOOTSTRAP = {  # name: (values, statistic, keyword arguments, expected (low, high))
    "mean_n2": ([0.25, 1.5], "mean", {"samples": 50}, [0.25, 1.5]),
    "mean_n3": ([0.1, 0.2, 0.6], "mean", {"samples": 200, "seed": 4}, [0.10000000000000002, 0.4666666666666666]),
    "mean_n40": (
        SAMPLE_40,
        "mean",
        {"samples": 1000, "seed": 1},
        [3.6869135625, 5.0298559375],
    ),
    "mean_n40_confidence_90": (
        SAMPLE_40,
        "mean",
        {"samples": 1000, "seed": 2, "confidence": 0.9},
        [3.805537, 4.91118975],
    ),
    "mean_all_equal": ([0.5, 0.5, 0.5, 0.5, 0.5], "mean", {"samples": 100}, [0.5, 0.5]),
    "mean_one_sample": (
        [0.3588, 1.5107, -1.7863, 1.6866, -0.0473, -0.8, -0.803, -1.0828],
        "mean",
        {"samples": 1, "seed": 5},
        [-0.09196250000000003, -0.09196250000000003],
    ),
    "max_basic": (
        SKEWED,
        "max",
        {"samples": 200, "seed": 3, "estimate": 1.0},
        [1.0, 1.1175190000000002],
    ),
    "max_percentile": (
        SKEWED,
        "max",
        {"samples": 200, "seed": 3},
        [0.882481, 1.0],
    ),
    "nan_every_fourth": (
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        "nan4",
        {"samples": 100},
        [3.025000000000001, 6.014999999999999],
    ),
}
SEED_BOOTSTRAP = {  # name: (values, samples, seed, expected [low, high])
    "one_seed": ([0.7], 100, 0, [0.7, 0.7]),
    "two_seeds": ([0.2, 0.5], 100, 0, [0.2, 0.5]),
    "three_seeds": ([0.1, 0.2, 0.6], 4000, 0, [0.10000000000000002, 0.6]),
    "all_equal": ([0.5, 0.5, 0.5], 100, 0, [0.5, 0.5]),
    "ten_seeds": (
        [0.6575, 0.5743, 0.403, 0.4788, 0.4713, 0.7362, 0.4057, 0.6376, 0.5123, 0.6022],
        1000,
        3,
        [0.48206924999999995, 0.61238],
    ),
    "one_resample": ([0.1, 0.4, 0.9, 0.3], 1, 2, [0.3, 0.3]),
    "non_finite": ([math.nan, 0.1, 0.3], 100, 0, [math.nan, math.nan]),
}
PERCENTILES = {  # name: (values, axis, expected [lows, highs])
    "replicates": (
        [
            [-1.1421, -1.0693, -0.7573],
            [-1.2317, 0.2671, -0.0069],
            [0.3047, -1.04, 0.7505],
            [0.2442, 0.6782, -0.5855],
            [1.446, 0.1023, 0.3268],
            [-0.4579, -0.6229, 0.1353],
            [-0.5029, 1.2179, -0.2711],
            [-0.6664, 0.0975, -1.8996],
            [-0.3076, 1.3496, 0.1928],
            [0.5707, 1.3826, 0.2389],
            [0.4864, -0.4774, 0.6693],
            [-0.5751, -0.6221, 0.0803],
            [-0.826, 0.2425, -0.0639],
            [0.1047, -0.8065, 0.892],
            [-0.9712, -0.1973, 1.245],
            [0.8423, -2.9761, -0.305],
            [-0.8499, 0.3219, 1.789],
            [0.3316, 0.4605, 1.5579],
            [-0.5751, 0.0921, -2.1118],
            [-1.007, 1.6023, 1.9217],
            [-1.0512, -0.362, 0.8116],
            [-0.5668, -1.0566, 1.0621],
            [-1.0223, -1.4748, -0.4693],
            [0.712, 2.3228, -1.6598],
            [-0.5225, -0.1796, -1.4365],
            [-1.1125, 0.1955, 1.2407],
            [0.541, -0.5399, -0.4927],
            [-0.5734, 0.0192, -0.1122],
            [1.8675, 0.8622, 0.7105],
            [0.7143, 0.3386, 2.6617],
            [-0.0833, -1.0118, 0.9063],
            [0.0487, 0.5182, -0.1101],
            [-1.0033, -0.0283, 0.5857],
            [-1.0933, 0.7781, -0.3816],
            [0.2465, 0.2065, 0.7368],
            [-1.1085, 0.3964, 0.4062],
            [-0.5707, 1.7508, 0.9802],
        ],
        0,
        [[-1.15106, -1.62493, -1.92082], [1.4881500000000005, 1.8080000000000007, 1.9957000000000011]],
    ),
    "with_nan": (
        [[0.1, math.nan, 0.3], [0.2, 0.5, math.nan], [0.9, 0.4, 0.7], [0.05, 0.6, 0.2]],
        0,
        [[0.053750000000000006, 0.405, 0.20500000000000002], [0.8474999999999999, 0.595, 0.6799999999999999]],
    ),
    "axis_1": (
        [
            [-1.2317, 0.2671, -0.0069, 0.5015, -1.3267, 1.1078, 0.0938, -1.1708, -1.3582, -1.3066, -0.7176],
            [0.3047, -1.04, 0.7505, 0.9406, -1.951, -1.3022, 0.1278, -0.3162, -0.0168, -0.853, 0.8794],
        ],
        1,
        [[-1.350325, -1.7888000000000002], [0.9562249999999999, 0.9253]],
    ),
    "single_row": ([[0.3, 0.1, 0.2]], 0, [[0.3, 0.1, 0.2], [0.3, 0.1, 0.2]]),
}
T_INTERVALS = {  # name: (values, confidence, expected (mean, low, high))
    "one_value": ([0.7], 0.95, [0.7, math.nan, math.nan]),
    "two_values": ([0.8, 0.9], 0.95, [0.8500000000000001, 0.21468976319126554, 1.4853102368087345]),
    "three_values": ([0.9, 0.95, 1.0], 0.95, [0.9500000000000001, 0.8257931144124836, 1.0742068855875166]),
    "all_equal": ([0.8, 0.8, 0.8, 0.8], 0.95, [0.8, 0.8, 0.8]),
    "five_values": ([0.61, 0.72, 0.55, 0.68, 0.7], 0.95, [0.6519999999999999, 0.5644648896862309, 0.739535110313769]),
    "ten_values_90": (
        [0.8243, 0.7761, 0.8335, 0.7306, 0.8833, 0.7905, 0.8267, 0.8388, 0.8122, 0.809],
        0.9,
        [0.8124999999999998, 0.7888226894498844, 0.8361773105501151],
    ),
    "ten_values_99": (
        [0.8243, 0.7761, 0.8335, 0.7306, 0.8833, 0.7905, 0.8267, 0.8388, 0.8122, 0.809],
        0.99,
        [0.8124999999999998, 0.7705236634719607, 0.8544763365280389],
    ),
    "large_offset": (
        [1000000.1, 1000000.2, 1000000.4],
        0.95,
        [1000000.2333333333, 999999.8538750298, 1000000.6127916367],
    ),
}


@pytest.mark.parametrize("name", PERMUTATION)
def test_paired_permutation_test_reproduces_the_table(name):
    a, b, kwargs, (statistic, p_value, exact, num_permutations, min_p_value) = PERMUTATION[name]
    expected = stats.PermutationResult(
        statistic=statistic,
        p_value=p_value,
        n=len(a),
        exact=exact,
        num_permutations=num_permutations,
        min_p_value=min_p_value,
        reduction=kwargs.get("reduction", 0.0),
    )
    assert stats.paired_permutation_test(a, b, **kwargs) == expected
    assert stats.paired_permutation_test(torch.tensor(a, dtype=torch.float64), np.array(b), **kwargs) == expected
    assert drift_stats.paired_permutation_test is stats.paired_permutation_test


def test_exact_null_distribution_is_every_sign_assignment():
    diffs = np.array([0.3, -1.2, 0.7, 2.0, -0.1])
    signs = np.array(np.meshgrid(*[[1.0, -1.0]] * diffs.size)).reshape(diffs.size, -1).T
    np.testing.assert_allclose(np.sort(stats._sign_flip_means(diffs)), np.sort(signs @ diffs / diffs.size))
    np.testing.assert_array_equal(stats._sign_flip_means(np.array([-0.4])), [-0.4, 0.4])


def test_ties_are_counted_where_scipy_p_value_would_miss_them():
    a, b, kwargs, (_, p_value, *_) = PERMUTATION["equal_with_reduction"]
    diffs = np.array(a) - (1 - kwargs["reduction"]) * np.array(b)  # all zero in exact arithmetic: every sign ties
    scipy_p = scipy.stats.permutation_test(
        (diffs,), np.mean, permutation_type="samples", vectorized=True, n_resamples=math.inf, alternative="less"
    ).pvalue
    assert scipy_p < p_value == stats.paired_permutation_test(a, b, **kwargs).p_value


def _statistic(values, kind):
    vector = torch.tensor(values, dtype=torch.float64)
    calls = iter(range(10**6))
    if kind == "mean":
        return lambda indices: float(vector[indices].mean())
    if kind == "max":
        return lambda indices: float(vector[indices].max())
    return lambda indices: math.nan if next(calls) % 4 == 0 else float(vector[indices].mean())


@pytest.mark.parametrize("name", GROUP_BOOTSTRAP)
def test_group_bootstrap_interval_reproduces_the_table(name):
    values, kind, kwargs, expected = GROUP_BOOTSTRAP[name]
    interval = stats.bootstrap_interval(_statistic(values, kind), len(values), **kwargs)
    assert interval == pytest.approx(tuple(expected), rel=1e-15, abs=1e-15)
    assert drift_stats.bootstrap_interval(_statistic(values, kind), len(values), **kwargs) == interval


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", SEED_BOOTSTRAP)
def test_seed_bootstrap_interval_reproduces_the_table(name):
    values, samples, seed, expected = SEED_BOOTSTRAP[name]
    interval = mean_over_seeds_interval(values, samples, seed)
    np.testing.assert_array_equal(interval, expected)
    if all(math.isfinite(v) for v in values):
        assert list(stats.bootstrap_mean_interval(values, samples, seed=seed)) == interval


@pytest.mark.parametrize(("n", "samples", "seed"), [(2, 7, 0), (5, 300, 4), (12, 1000, 9)])
def test_seed_bootstrap_draws_one_integers_block_from_the_seeded_generator(n, samples, seed):
    values = np.random.default_rng(n).normal(size=n)
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    expected = np.nanpercentile(values[draws].mean(1), [2.5, 97.5]).tolist()
    assert list(stats.bootstrap_mean_interval(values, samples, seed=seed)) == expected


@pytest.mark.parametrize("name", PERCENTILES)
def test_percentile_interval_reproduces_the_table(name):
    values, axis, expected = PERCENTILES[name]
    np.testing.assert_array_equal(percentile_interval(np.array(values), axis=axis), expected)
    np.testing.assert_array_equal(stats.percentile_interval(np.array(values), 0.95, axis), expected)


@pytest.mark.parametrize("name", T_INTERVALS)
def test_t_interval_reproduces_the_table(name):
    values, confidence, expected = T_INTERVALS[name]
    result = stats.t_interval(values, confidence)
    np.testing.assert_array_equal(result, expected)
    summary = mean_interval(values, confidence)
    assert summary["n"] == len(values)
    np.testing.assert_array_equal([summary["mean"], summary["low"], summary["high"]], expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.bootstrap_mean_interval([], 10), "non-empty 1-D"),
        (lambda: stats.bootstrap_mean_interval([[1.0, 2.0]], 10), "non-empty 1-D"),
        (lambda: stats.bootstrap_mean_interval([1.0, 2.0], 0), "samples"),
    ],
)
def test_bootstrap_mean_interval_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
