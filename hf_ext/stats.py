"""Statistics shared by the studies, on ``scipy.stats``.

- :func:`percentile_interval`: percentile interval of resampled values (NaNs ignored).
- :func:`bootstrap_mean_interval`: percentile bootstrap interval of a mean (``scipy.stats.bootstrap``).
- :func:`bootstrap_interval`: percentile or basic bootstrap interval of any statistic of resampled groups.
- :func:`paired_permutation_test`: one-sided paired sign-flip permutation test, optionally with a relative margin
  (exact through ``scipy.stats.permutation_test``).
- :func:`t_interval`: mean and Student-t interval of the mean (``scipy.stats.t``).
- :func:`majority_share`, :func:`accuracy_power`: the chance level of a classification and what an accuracy
  on ``n`` examples can resolve, as the studies print before their results.

Seeded results are reproducible and keep the draws of the hand-written code they replace:
``bootstrap_mean_interval`` hands scipy ``numpy.random.default_rng(seed)``, which scipy draws from as that code
did; ``bootstrap_interval`` and the Monte Carlo branch of ``paired_permutation_test`` draw from a seeded
``torch.Generator``, a stream scipy (numpy generators only) cannot reproduce, so they resample themselves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

# Largest number of matrix elements (sign vectors x pairs) materialised at once.
_CHUNK_ELEMENTS = 2**22


def percentile_interval(values: np.ndarray, confidence: float = 0.95, axis: int = 0) -> np.ndarray:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of ``values`` along ``axis`` (linear
    interpolation, NaNs ignored), stacked first: the 2.5th and 97.5th percentiles by default."""
    half_width = 50.0 * confidence
    return np.nanpercentile(values, [50.0 - half_width, 50.0 + half_width], axis=axis)


def bootstrap_mean_interval(
    values: Sequence[float] | np.ndarray, samples: int, *, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D).

    ``scipy.stats.bootstrap`` draws the ``samples`` resamples at once from ``numpy.random.default_rng(seed)``
    (``integers(0, n, (samples, n))``); the interval is :func:`percentile_interval` of its bootstrap distribution
    (scipy's own ``confidence_interval`` reads the quantiles at ``(1 - confidence) / 2``, which for 0.95 is not the
    double nearest 0.025, and moves the bounds in their last digits). A single value is its own interval.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"Expected `values` to be a non-empty 1-D sequence, found shape {values.shape}.")
    if samples < 1:
        raise ValueError(f"Expected `samples` to be at least 1, found {samples}.")
    if values.size == 1:
        return float(values[0]), float(values[0])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Degrees of freedom", RuntimeWarning)  # scipy's standard error of 1 resample
        result = stats.bootstrap(
            (values,),
            np.mean,
            n_resamples=samples,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = percentile_interval(result.bootstrap_distribution, confidence)
    return float(low), float(high)


def bootstrap_interval(
    statistic: Callable[[torch.Tensor], float],
    num_groups: int,
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    estimate: float | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over resampled groups; the basic interval with ``estimate``.

    Each of ``samples`` resamples is a 1-D LongTensor of ``num_groups`` indices drawn with replacement from
    ``range(num_groups)`` by a generator seeded with ``seed``; ``statistic`` maps it to a float. Non-finite
    values are skipped (more than half of them is an error). Returns :func:`percentile_interval` ``(lo, hi)`` of
    the remaining values. With ``estimate`` (the statistic on the original sample) it returns the basic bootstrap
    interval ``(2 estimate - hi, 2 estimate - lo)`` instead, which corrects a statistic whose resamples are
    biased (CKA rises when resampling duplicates rows).
    """
    if num_groups < 2:
        raise ValueError(f"Expected `num_groups` to be at least 2, found {num_groups}.")
    if samples < 1:
        raise ValueError(f"Expected `samples` to be at least 1, found {samples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Expected `confidence` strictly between 0 and 1, found {confidence}.")

    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        indices = torch.randint(0, num_groups, (num_groups,), generator=generator)
        value = float(statistic(indices))
        if math.isfinite(value):
            values.append(value)
    non_finite = samples - len(values)
    if non_finite > samples / 2:
        raise ValueError(
            f"Expected the statistic to be finite on at least half of the resamples, "
            f"found {non_finite} of {samples} non-finite."
        )
    low, high = (float(bound) for bound in percentile_interval(np.asarray(values), confidence))
    return (low, high) if estimate is None else (2 * estimate - high, 2 * estimate - low)


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of :func:`paired_permutation_test`.

    ``statistic`` is the observed mean paired difference ``mean(a - (1 - reduction) * b)``; ``num_permutations``
    is ``2**n`` for an exact test and the number of random sign vectors otherwise; ``min_p_value`` is the
    smallest p-value the test could have produced (``1 / 2**n`` exact, ``1 / (samples + 1)`` Monte Carlo).
    """

    statistic: float
    p_value: float
    n: int
    exact: bool
    num_permutations: int
    min_p_value: float
    reduction: float

    def to_dict(self) -> dict:
        """The fields as a plain JSON-serialisable dict."""
        return asdict(self)


def _as_vector(values: Sequence[float] | np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        vector = values.detach().to(device="cpu", dtype=torch.float64)
    else:
        vector = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if vector.ndim != 1:
        raise ValueError(f"Expected `{name}` to be 1-D, found shape {tuple(vector.shape)}.")
    if vector.numel() == 0:
        raise ValueError(f"Expected `{name}` to hold at least one value, found it empty.")
    if not torch.isfinite(vector).all():
        raise ValueError(f"Expected `{name}` to hold only finite values, found NaN or infinity.")
    return vector


def _sign_flip_means(diffs: np.ndarray) -> np.ndarray:
    """The mean of ``diffs`` under every one of the ``2**n`` sign assignments."""
    if diffs.size == 1:  # scipy.stats.permutation_test needs two observations
        return np.array([diffs[0], -diffs[0]])
    return stats.permutation_test(
        (diffs,),
        np.mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=math.inf,
        batch=max(1, _CHUNK_ELEMENTS // diffs.size),
    ).null_distribution


def _monte_carlo_count(diffs: torch.Tensor, threshold: float, samples: int, seed: int) -> int:
    """Number of ``samples`` random sign vectors whose signed mean is at most ``threshold``."""
    n = diffs.numel()
    generator = torch.Generator().manual_seed(seed)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    count = 0
    for start in range(0, samples, rows_per_chunk):
        rows = min(rows_per_chunk, samples - start)
        signs = 2.0 * torch.randint(0, 2, (rows, n), generator=generator, dtype=torch.float64) - 1.0
        count += int(((signs @ diffs) / n <= threshold).sum())
    return count


def paired_permutation_test(
    a: Sequence[float] | np.ndarray | torch.Tensor,
    b: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    reduction: float = 0.0,
    max_exact: int = 2**16,
    samples: int = 100_000,
    seed: int = 0,
) -> PermutationResult:
    """One-sided paired sign-flip permutation test that A's values are smaller than B's.

    The null hypothesis is "A is not at least ``reduction`` smaller than B": with differences
    ``d_i = a_i - (1 - reduction) * b_i`` the signs of ``d_i`` are exchangeable under it, and the p-value is the
    fraction of sign assignments (the identity included) whose mean is at most the observed ``mean(d)``; means
    within ``1e-12 * max |d_i|`` of it count as ties (scipy's own p-value, with a tolerance relative to the
    observed mean, misses ties when that mean is near zero). All ``2**n`` assignments are enumerated by
    ``scipy.stats.permutation_test`` (``permutation_type="samples"``) when ``2**n <= max_exact``; otherwise
    ``samples`` random ones are drawn from a torch generator seeded with ``seed`` and
    ``p = (1 + count) / (1 + samples)``.

    Args:
        a: Values of method A, one per pair (1-D, finite).
        b: Values of method B, same length as ``a``.
        reduction: Relative margin ``r`` in ``[0, 1)`` by which A must be smaller than B.
        max_exact: Largest number of sign assignments to enumerate exactly.
        samples: Number of random sign vectors for the Monte Carlo test.
        seed: Seed of the Monte Carlo generator.
    """
    a_vector = _as_vector(a, "a")
    b_vector = _as_vector(b, "b")
    if a_vector.numel() != b_vector.numel():
        raise ValueError(
            f"Expected `a` and `b` to have the same length, found {a_vector.numel()} and {b_vector.numel()}."
        )
    if not 0.0 <= reduction < 1.0:
        raise ValueError(f"Expected `reduction` in [0, 1), found {reduction}.")
    if samples < 1:
        raise ValueError(f"Expected `samples` to be at least 1, found {samples}.")

    diffs = a_vector - (1.0 - reduction) * b_vector
    n = diffs.numel()
    statistic = float(diffs.mean())
    threshold = statistic + 1e-12 * float(diffs.abs().max())

    exact = 2**n <= max_exact
    if exact:
        num_permutations = 2**n
        p_value = int((_sign_flip_means(diffs.numpy()) <= threshold).sum()) / num_permutations
        min_p_value = 1.0 / num_permutations
    else:
        num_permutations = samples
        p_value = (1 + _monte_carlo_count(diffs, threshold, samples, seed)) / (1 + samples)
        min_p_value = 1.0 / (samples + 1)
    return PermutationResult(
        statistic=statistic,
        p_value=p_value,
        n=n,
        exact=exact,
        num_permutations=num_permutations,
        min_p_value=min_p_value,
        reduction=float(reduction),
    )


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and the two-sided Student-t interval of it, ``(mean, low, high)``.

    The interval is ``mean -+ q * sd / sqrt(n)`` with ``q`` the upper end of ``scipy.stats.t.interval(confidence,
    n - 1)`` and ``sd`` the sample standard deviation; a single value gives ``nan`` bounds.
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = float(stats.t.interval(confidence, n - 1)[1]) * sd / math.sqrt(n)
    return mean, mean - half_width, mean + half_width


def majority_share(labels: Sequence[int]) -> float:
    """Accuracy of always answering the most frequent label: the floor a classifier must beat."""
    values = [int(label) for label in labels]
    if not values:
        raise ValueError("majority_share of no labels")
    return max(values.count(v) for v in set(values)) / len(values)


def accuracy_power(accuracy: float, n: int) -> str:
    """One sentence: the binomial standard error of an accuracy near ``accuracy`` on ``n`` examples and the
    smallest difference between two such accuracies a 95% test resolves (1.96 * sqrt(2) * s.e.)."""
    se = math.sqrt(accuracy * (1 - accuracy) / n)
    return (
        f"an accuracy near {accuracy:.2f} on {n} examples has binomial s.e. {se:.3f} (two such accuracies differ "
        f"detectably by about {1.96 * math.sqrt(2) * se:.3f}; one prediction is {1 / n:.4f})"
    )
