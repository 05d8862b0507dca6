"""stats.json of the head study against scipy / numpy computed by hand on a fixed table."""

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr

from hf_ext.heads.analysis import PAIRS, partial_spearman, statistics, top_k_overlap, within_layer_spearman


def _table():
    rng = np.random.default_rng(0)
    layers, heads = 4, 6
    depth = np.arange(layers)[:, None] * np.ones((1, heads))
    columns = {name: rng.normal(size=(layers, heads)) for name in ("I_pre", "I_post", "G_pre", "F_pre")}
    columns["U"] = depth + 0.3 * rng.normal(size=(layers, heads))  # grows with depth, as measured
    columns["Urel"] = columns["U"] + 0.5 * columns["G_pre"]
    return columns


def test_statistics_match_scipy_by_hand():
    columns = _table()
    stats = statistics(columns, np.full((4, 6), "", dtype=object), top_k=5)
    assert stats["heads"] == 24 and stats["chance_top_k_overlap"] == pytest.approx(5 / 24)
    depth = np.repeat(np.arange(4.0), 6)
    for x, y in PAIRS:
        entry = stats[f"{x}_vs_{y}"]
        rho, p = spearmanr(columns[x].ravel(), columns[y].ravel())
        assert (entry["spearman_rho"], entry["p_value"]) == pytest.approx((rho, p))
        within = np.mean([spearmanr(a, b)[0] for a, b in zip(columns[x], columns[y])])
        assert entry["within_layer_rho"] == pytest.approx(within)
        # partial rank correlation = Pearson correlation of the rank residuals after regressing out depth's ranks
        rx, ry, rz = (rankdata(v) for v in (columns[x].ravel(), columns[y].ravel(), depth))
        design = np.column_stack([np.ones_like(rz), rz])
        residual = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
        assert entry["partial_rho_given_layer"] == pytest.approx(pearsonr(*residual)[0], abs=1e-9)
        assert entry["top5_overlap"] == top_k_overlap(columns[x], columns[y], 5)
    assert stats["depth_rho"]["U"] > 0.8  # the planted depth trend
    # Urel follows G_pre within layers; across all heads depth adds to it
    assert stats["G_pre_vs_Urel"]["within_layer_rho"] > 0.3


def test_partial_and_within_layer_edge_cases():
    x = np.arange(12.0)
    assert np.isnan(partial_spearman(x, x[::-1], x))  # depth explains x completely
    constant = np.ones((2, 3))
    assert np.isnan(within_layer_spearman(constant, constant))
