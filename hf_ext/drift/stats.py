"""Statistics for drift studies: paired sign-flip permutation tests and bootstrap intervals.

``paired_permutation_test`` asks whether method A drifts less than method B on the same items (paired by
position), optionally by at least a given relative margin; ``bootstrap_interval`` gives percentile intervals
for any statistic of resampled groups (both live in :mod:`hf_ext.stats`); ``significance_mark`` turns a p-value
into the stars drawn on figures.
"""

from __future__ import annotations

from ..stats import PermutationResult, bootstrap_interval, paired_permutation_test

__all__ = ["PermutationResult", "bootstrap_interval", "paired_permutation_test", "significance_mark"]


def significance_mark(p: float) -> str:
    """Stars for a p-value on figures: ``***`` below 0.001, ``**`` below 0.01, ``*`` below 0.05, else ``""``."""
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return ""
