"""Statistics for drift studies: paired sign-flip permutation tests and bootstrap intervals.

``paired_permutation_test`` asks whether method A drifts less than method B on the same items (paired by
position), optionally by at least a given relative margin; ``bootstrap_interval`` gives percentile intervals
for any statistic of resampled groups; ``significance_mark`` turns a p-value into the stars drawn on figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

# Largest number of matrix elements (sign vectors x pairs) materialised at once.
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of ``paired_permutation_test``.

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


def _exact_count(diffs: torch.Tensor, threshold: float) -> int:
    """Number of all ``2**n`` sign vectors whose signed mean is at most ``threshold``."""
    n = diffs.numel()
    total = 2**n
    bits = torch.arange(n, dtype=torch.int64)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    count = 0
    for start in range(0, total, rows_per_chunk):
        index = torch.arange(start, min(start + rows_per_chunk, total), dtype=torch.int64)
        # Bit j of the row index picks the sign of pair j; row 0 is the identity (all +1).
        signs = 1.0 - 2.0 * ((index[:, None] >> bits) & 1).to(torch.float64)
        count += int(((signs @ diffs) / n <= threshold).sum())
    return count


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
    fraction of sign assignments (the identity included) whose mean is at most the observed ``mean(d)``.
    All ``2**n`` assignments are enumerated when ``2**n <= max_exact``; otherwise ``samples`` random ones are
    drawn from a generator seeded with ``seed`` and ``p = (1 + count) / (1 + samples)``.

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
    # Rounding differs between the observed mean and the matrix products; the tolerance keeps exact ties
    # (the identity above all) counted.
    threshold = statistic + 1e-12 * float(diffs.abs().max())

    exact = 2**n <= max_exact
    if exact:
        num_permutations = 2**n
        p_value = _exact_count(diffs, threshold) / num_permutations
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


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linearly interpolated percentile (``q`` in [0, 1]) of already sorted values."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (position - low) * (sorted_values[high] - sorted_values[low])


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
    values are skipped (more than half of them is an error). Returns the ``(1 - confidence) / 2`` and
    ``1 - (1 - confidence) / 2`` percentiles ``(lo, hi)`` of the remaining values. With ``estimate`` (the
    statistic on the original sample) it returns the basic bootstrap interval ``(2 estimate - hi,
    2 estimate - lo)`` instead, which corrects a statistic whose resamples are biased (CKA rises when
    resampling duplicates rows).
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
    values.sort()
    tail = (1.0 - confidence) / 2.0
    low, high = _percentile(values, tail), _percentile(values, 1.0 - tail)
    return (low, high) if estimate is None else (2 * estimate - high, 2 * estimate - low)


def significance_mark(p: float) -> str:
    """Stars for a p-value on figures: ``***`` below 0.001, ``**`` below 0.01, ``*`` below 0.05, else ``""``."""
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return ""
