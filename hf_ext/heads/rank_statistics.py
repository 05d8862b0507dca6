"""Rank statistics of per-head columns, vectorised over leading axes (bootstrap replicates, or none).

A column is ``[..., num_layers, num_heads]``. The study compares two columns by Spearman rho over all heads,
the mean of the within-layer rhos (heads at the same depth only), the rho with depth partialled out
(``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` with z the layer index), and the top-K overlap.
"""

from __future__ import annotations

import numpy as np


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho along the last axis (average ranks for ties, as scipy); NaN where a row is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(-1) / denominator, np.nan)


def top_k_overlap_rows(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Share of the ``k`` largest of ``x`` among the ``k`` largest of ``y``, along the last axis."""
    chosen = []
    for values in (x, y):
        top = np.argsort(-values, axis=-1, kind="stable")[..., :k]
        mask = np.zeros(values.shape, dtype=bool)
        np.put_along_axis(mask, top, True, axis=-1)
        chosen.append(mask)
    return (chosen[0] & chosen[1]).sum(-1) / k


def pair_statistics_rows(x: np.ndarray, y: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """For ``[..., num_layers, num_heads]`` columns: rho over all heads, mean within-layer rho, rho partialled
    for depth and top-K overlap, each of shape ``[...]``."""
    flat_x, flat_y = x.reshape(*x.shape[:-2], -1), y.reshape(*y.shape[:-2], -1)
    depth = np.broadcast_to(np.repeat(np.arange(x.shape[-2], dtype=float), x.shape[-1]), flat_x.shape)
    r_xy, r_xz, r_yz = spearman_rows(flat_x, flat_y), spearman_rows(flat_x, depth), spearman_rows(flat_y, depth)
    with np.errstate(invalid="ignore", divide="ignore"):
        partial = (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    within = spearman_rows(x, y)
    counted = np.isfinite(within).sum(-1)
    return {
        "spearman_rho": r_xy,
        "within_layer_rho": np.where(counted > 0, np.nansum(within, -1) / np.maximum(counted, 1), np.nan),
        "partial_rho_given_layer": partial,
        f"top{top_k}_overlap": top_k_overlap_rows(flat_x, flat_y, top_k),
    }
