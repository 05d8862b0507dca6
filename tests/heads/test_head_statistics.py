"""stats.json of the head study against scipy / numpy computed by hand on a fixed table."""

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr

from hf_ext.heads.analysis import PAIRS, statistics, top_k_overlap
from hf_ext.heads.bootstrap import mean_over_seeds_interval
from hf_ext.heads.rank_statistics import pair_statistics_rows, spearman_rows, top_k_overlap_rows


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
    assert "H_pre_vs_Urel" not in stats  # no entropy column in this table
    for x, y in PAIRS[:-2]:
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
    depth_only = np.repeat(np.arange(3.0), 4).reshape(3, 4)  # depth explains x completely: no partial rho
    assert np.isnan(
        pair_statistics_rows(depth_only, np.random.default_rng(0).normal(size=(3, 4)), 2)["partial_rho_given_layer"]
    )
    constant = np.ones((2, 3))
    assert np.isnan(pair_statistics_rows(constant, constant, 2)["within_layer_rho"])


def test_vectorised_rank_statistics_equal_scipy_row_by_row():
    """The bootstrap computes every replicate at once; each row must equal scipy's answer for it, ties included."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(50, 3, 4)).astype(float)  # many ties
    y = rng.normal(size=(50, 3, 4))
    rows = pair_statistics_rows(x, y, 3)
    for i in range(50):
        assert rows["spearman_rho"][i] == pytest.approx(spearmanr(x[i].ravel(), y[i].ravel())[0], abs=1e-12)
        one = statistics({"I_pre": x[i], "G_pre": y[i]} | _fill(x[i]), np.full((3, 4), "", dtype=object), 3)
        entry = one["I_pre_vs_G_pre"]
        assert rows["within_layer_rho"][i] == pytest.approx(entry["within_layer_rho"], abs=1e-12)
        assert rows["top3_overlap"][i] == top_k_overlap(x[i], y[i], 3)
    assert spearman_rows(np.ones(4), np.arange(4.0)) != spearman_rows(np.ones(4), np.arange(4.0))  # NaN: constant
    assert top_k_overlap_rows(np.arange(6.0), np.arange(6.0)[::-1], 3) == 0


def _fill(like):
    rng = np.random.default_rng(2)
    return {name: rng.normal(size=like.shape) for name in ("I_post", "F_pre", "U", "Urel")}


def test_interval_over_seeds_is_the_spread_of_resampled_means():
    low, high = mean_over_seeds_interval([0.1, 0.2, 0.6], 4000)
    assert 0.1 <= low < 0.3 < high <= 0.6  # mean 0.3; with 3 seeds the extremes are the all-one-seed draws
    assert mean_over_seeds_interval([0.5, 0.5, 0.5], 100) == [0.5, 0.5]
