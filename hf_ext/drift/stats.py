"""Statistics for drift studies: paired sign-flip permutation tests and bootstrap intervals.

``paired_permutation_test`` asks whether method A drifts less than method B on the same items (paired by
position), optionally by at least a given relative margin; ``bootstrap_interval`` gives percentile intervals
for any statistic of resampled groups. Both live in :mod:`hf_ext.stats`.
"""

from __future__ import annotations

from ..stats import PermutationResult, bootstrap_interval, paired_permutation_test

__all__ = ["PermutationResult", "bootstrap_interval", "paired_permutation_test"]
