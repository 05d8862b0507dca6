"""Bootstrap intervals of the head study: over evaluation examples for what was measured on them, over seeds
for the rank correlations.

A replicate resamples the N evaluation examples with replacement, as multinomial counts, so every per-head
importance of a replicate is a count-weighted mean (ablation, Fisher) or sum (gradient) of the per-example
values the study saves (``I_pre_examples.safetensors``, ``I_post_examples.safetensors``,
``G_pre_examples.safetensors``, ``entropy_examples.safetensors``). All columns of a replicate use the same
examples; U and Urel are properties of the two checkpoints and do not vary. Intervals are percentile
intervals (2.5 and 97.5, :func:`hf_ext.stats.percentile_interval`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import load_tensors
from ..stats import bootstrap_mean_interval
from ..stats import percentile_interval as percentile_interval

EXAMPLE_FILES = {"I_pre": "I_pre_examples.safetensors", "I_post": "I_post_examples.safetensors"}
GRADIENT_FILE = "G_pre_examples.safetensors"
ENTROPY_FILE = "entropy_examples.safetensors"  # optional: runs from before it was saved have none
MEASURED_ON_EXAMPLES = ("I_pre", "I_post", "G_pre", "F_pre", "H_pre")
METRIC_KEYS = {
    "loss": ("example_loss", "base_example_loss"),
    "accuracy": ("example_accuracy", "base_example_accuracy"),
}


def example_replicates(run: str | Path, metric: str, samples: int, seed: int = 0) -> dict[str, np.ndarray] | None:
    """``{column: [samples, num_layers, num_heads]}`` for I_pre, I_post, G_pre, F_pre (and H_pre where saved)
    under ``samples`` resamplings of the evaluation examples; ``None`` when the run saved no per-example values
    (older runs)."""
    run = Path(run)
    paths = {name: run / file for name, file in EXAMPLE_FILES.items()} | {"G_pre": run / GRADIENT_FILE}
    if samples == 0 or not all(path.is_file() for path in paths.values()):
        return None
    example, base = METRIC_KEYS[metric]
    loaded = {name: load_tensors(path)[0] for name, path in paths.items()}
    per_example = {name: loaded[name][example].double().numpy() for name in EXAMPLE_FILES}  # [L, H, N]
    bases = {name: loaded[name][base].double().numpy() for name in EXAMPLE_FILES}  # [N]
    gradient = loaded["G_pre"]["example_gradient"].double().numpy()  # [N, L, H]
    sizes = {name: values.shape[-1] for name, values in per_example.items()} | {"G_pre": gradient.shape[0]}
    entropy = None
    if (run / ENTROPY_FILE).is_file():
        entropy = load_tensors(run / ENTROPY_FILE)[0]["example_entropy"].double().numpy()  # [N, L, H]
        sizes["H_pre"] = entropy.shape[0]
    if len(set(sizes.values())) != 1:
        raise DataError(f"{run}: the per-example files hold different numbers of examples {sizes}; re-run the seed")
    n = gradient.shape[0]
    if n == 0:
        raise DataError(f"{run}: the per-example files hold no examples; re-run the seed")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=samples).astype(float)  # [B, N]
    sign = 1.0 if metric == "loss" else -1.0  # loss increase, accuracy drop
    replicates = {
        name: sign * (np.einsum("lhn,bn->blh", values, counts) - (counts @ bases[name])[:, None, None]) / n
        for name, values in per_example.items()
    }
    replicates["G_pre"] = np.einsum("nlh,bn->blh", np.abs(gradient), counts)
    replicates["F_pre"] = np.einsum("nlh,bn->blh", gradient**2, counts) / n
    if entropy is not None:
        replicates["H_pre"] = np.einsum("nlh,bn->blh", entropy, counts) / n
    return replicates


def mean_over_seeds_interval(values: np.ndarray, samples: int, seed: int = 0) -> list[float]:
    """Percentile interval of the mean of ``values`` (one per seed) under resampling the seeds with replacement
    (:func:`hf_ext.stats.bootstrap_mean_interval`); with few seeds it is coarse (3 seeds: at most 10 distinct
    means)."""
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():  # a seed without the statistic: no interval, as its mean is NaN too
        return [math.nan, math.nan]
    return list(bootstrap_mean_interval(values, samples, seed=seed))
