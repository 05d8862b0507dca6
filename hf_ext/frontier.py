"""Comparisons at matched task performance: two arms' outcome read off each seed's frontier at equal loss.

A study that sweeps a knob (the learning rate) per arm gets, for every arm and seed, points
``(task loss, outcome)``. Comparing arms at one knob setting compares models that fit the task to different
degrees; this module instead interpolates each seed's outcome at common task-loss levels and pairs the arms
by seed, so the seed is the statistical unit:

- :func:`past_lowest_loss` names the runs past a seed's frontier: at a learning rate above the one that reached
  the lowest task loss (an overshoot fits worse with a larger step; left on the curve it would fold the
  frontier back over the loss range of the under-fitted runs).
- :func:`interpolate` reads one curve at a loss, linearly between the runs ordered by loss (``nan``
  outside the losses the runs reached: no extrapolation).
- :func:`matched_levels` picks loss levels inside the range that every curve reached.
- :func:`compare_at_matched_loss` gives, per level, the per-seed differences ``other - reference``, their
  mean with a Student-t interval over seeds, the exact two-sided sign-flip p-value, the smallest p
  those seeds allow, and the smallest difference the seeds could resolve (the interval's half-width).
- :func:`compare_on_reference_curve` needs no loss range common to every seed: each run of ``other`` is read
  against ``reference``'s curve of the same seed at that run's own loss; each seed contributes the mean gap of
  its runs inside its reference range, so seeds that fit the task to different degrees still pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .stats import paired_permutation_test, t_interval

Curve = Sequence[tuple[float, float]]  # (task loss, outcome) per run of one arm and seed


def past_lowest_loss(runs: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the runs ``(learning rate, task loss)`` of one arm and seed whose learning rate is above the
    one with the lowest loss: they are off the frontier."""
    if not runs:
        return []
    best = min(range(len(runs)), key=lambda i: runs[i][1])
    return [i for i, (rate, _) in enumerate(runs) if rate > runs[best][0]]


def interpolate(curve: Curve, loss: float) -> float:
    """The outcome of ``curve`` at ``loss``, linear between the two runs whose losses bracket it, ``nan``
    outside ``[min loss, max loss]`` (runs at equal loss are averaged)."""
    points = sorted((float(x), float(y)) for x, y in curve if math.isfinite(x) and math.isfinite(y))
    if not points or not points[0][0] <= loss <= points[-1][0]:
        return math.nan
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    unique = np.unique(xs)
    return float(np.interp(loss, unique, [ys[xs == x].mean() for x in unique]))


def matched_levels(curves: Sequence[Curve], count: int = 3) -> list[float]:
    """``count`` loss levels evenly inside the range every curve reached (its ends excluded); ``[]`` when the
    ranges do not overlap."""
    low = max(min(x for x, _ in c) for c in curves)
    high = min(max(x for x, _ in c) for c in curves)
    if not high > low:
        return []
    return [low + (high - low) * (i + 1) / (count + 1) for i in range(count)]


def compare_at_matched_loss(
    reference: Mapping[int, Curve], other: Mapping[int, Curve], *, levels: int = 3, confidence: float = 0.95
) -> dict:
    """``other`` minus ``reference`` at matched task loss, the seeds (keys of both mappings) as units.

    Returns ``{"seeds", "levels": [...]}`` where each level holds ``loss``, ``differences`` (one per seed),
    ``mean``, ``low``/``high`` (Student-t interval over seeds), ``p_two_sided`` (exact sign-flip test of a zero
    mean difference), ``min_p`` (the smallest two-sided p these seeds allow) and ``resolution`` (the interval's
    half-width: differences smaller than it are not resolved); or ``{"skipped": reason}``.
    """
    seeds = sorted(set(reference) & set(other))
    if len(seeds) < 2:
        return {"skipped": f"needs at least 2 seeds with both arms, found {len(seeds)}"}
    curves = [reference[s] for s in seeds] + [other[s] for s in seeds]
    if any(len(c) < 2 for c in curves):
        return {"skipped": "needs at least 2 learning rates per arm and seed to draw a frontier"}
    grid = matched_levels(curves, levels)
    if not grid:
        return {"skipped": "the arms' task losses do not overlap: widen the learning-rate grids"}
    out = []
    for loss in grid:
        differences = [interpolate(other[s], loss) - interpolate(reference[s], loss) for s in seeds]
        out.append({"loss": loss, **_seed_differences(differences, confidence)})
    return {"seeds": seeds, "levels": out}


def compare_on_reference_curve(
    reference: Mapping[int, Curve], other: Mapping[int, Curve], *, confidence: float = 0.95
) -> dict:
    """``other`` minus ``reference`` at the task loss of each run of ``other``, the seeds as units.

    Per seed: the runs of ``other`` whose loss lies inside the losses ``reference`` reached in that seed, each
    minus ``reference``'s curve interpolated at its loss; the seed's difference is their mean. Seeds without
    such a run are listed in ``outside`` and left out. Returns ``seeds``, ``outside``, ``runs`` (per seed),
    ``differences``, ``mean``, ``low``/``high`` (Student-t interval), ``p_two_sided``, ``min_p`` and
    ``resolution`` as :func:`compare_at_matched_loss` does; or ``{"skipped": reason}``.
    """
    seeds, outside, runs, differences = [], [], [], []
    for seed in sorted(set(reference) & set(other)):
        gaps = [y - interpolate(reference[seed], x) for x, y in other[seed]]
        gaps = [gap for gap in gaps if math.isfinite(gap)]
        if gaps:
            seeds.append(seed)
            runs.append(len(gaps))
            differences.append(float(np.mean(gaps)))
        else:
            outside.append(seed)
    if len(seeds) < 2:
        return {
            "skipped": f"{len(seeds)} seed(s) have a run inside the reference's task-loss range, needs 2",
            "outside": outside,
        }
    return {"seeds": seeds, "outside": outside, "runs": runs, **_seed_differences(differences, confidence)}


def _seed_differences(differences: list[float], confidence: float) -> dict:
    """Mean and Student-t interval of per-seed differences, the exact two-sided sign-flip p of a zero mean, the
    smallest p these seeds allow and the interval's half-width."""
    mean, low, high = t_interval(differences, confidence)
    zeros = [0.0] * len(differences)
    one_sided = [paired_permutation_test(d, zeros).p_value for d in (differences, [-x for x in differences])]
    return {
        "differences": differences,
        "mean": mean,
        "low": low,
        "high": high,
        "p_two_sided": min(1.0, 2 * min(one_sided)),
        "min_p": min(1.0, 2 / 2 ** len(differences)),
        "resolution": (high - low) / 2,
    }


def format_comparison(comparison: Mapping, reference: str, other: str, outcome: str) -> list[str]:
    """Printable lines of :func:`compare_at_matched_loss`."""
    if "skipped" in comparison:
        return [f"{outcome}, {other} vs {reference} at matched task loss: not compared ({comparison['skipped']})"]
    n = len(comparison["seeds"])
    lines = [f"{outcome}, {other} minus {reference} at matched task loss ({n} seeds as units, 95% t interval):"]
    for level in comparison["levels"]:
        lines.append(
            f"  loss {level['loss']:.4f}: {level['mean']:+.4f} [{level['low']:+.4f}, {level['high']:+.4f}]  "
            f"p = {level['p_two_sided']:.3g} (smallest possible {level['min_p']:.3g}; "
            f"differences below {level['resolution']:.4f} not resolved)"
        )
    return lines
