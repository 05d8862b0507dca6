import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from hf_ext.heads.analysis import (
    CaseThresholds,
    aggregate,
    aggregate_seeds,
    classify,
    load_measurements,
    plot,
    read_jsonl,
    top_k_overlap,
    write_jsonl,
)

I_PRE = np.array([[0.9, 0.1, 0.5], [0.3, 0.0, 0.7]])
URel = np.array([[0.01, 0.9, 0.2], [0.4, 0.8, 0.3]])
G_PRE = np.array([[3.0, 1.0, 2.0], [0.5, 0.1, 2.5]])


def _write_run(path, scale=1.0):
    path.mkdir(parents=True, exist_ok=True)
    write_jsonl(path / "I_pre.jsonl", {"loss_increase": I_PRE * scale, "accuracy_drop": I_PRE / 2})
    write_jsonl(path / "I_post.jsonl", {"loss_increase": I_PRE / 3, "accuracy_drop": I_PRE / 4})
    write_jsonl(path / "G_pre.jsonl", {"gradient": G_PRE, "fisher": G_PRE**2})
    write_jsonl(path / "U.jsonl", {"U": URel * 10, "Urel": URel})
    return path


def test_aggregate_matches_hand_computation(tmp_path):
    run = _write_run(tmp_path)
    stats = aggregate(run, top_k=2, thresholds=CaseThresholds(important=80, static=40, plastic=80, unimportant=40))
    rho, p = spearmanr(I_PRE.ravel(), URel.ravel())
    assert stats["I_pre_vs_Urel"]["spearman_rho"] == pytest.approx(rho) and stats["I_pre_vs_Urel"][
        "p_value"
    ] == pytest.approx(p)
    # top-2 of I_pre: (0,0)=0.9, (1,2)=0.7; top-2 of Urel: (0,1)=0.9, (1,1)=0.8 -> no overlap
    assert stats["I_pre_vs_Urel"]["top2_overlap"] == 0.0
    # top-2 of G_pre: (0,0)=3.0, (1,2)=2.5 -> full overlap with I_pre
    assert stats["I_pre_vs_G_pre"]["top2_overlap"] == 1.0
    # p80 of I_pre = 0.7 -> important (0,0),(1,2); p40 of Urel = 0.3 -> static (0,0),(0,2),(1,2)
    # p80 of Urel = 0.8 -> plastic (0,1),(1,1); p40 of I_pre = 0.3 -> unimportant (0,1),(1,0),(1,1)
    cases = json.loads((run / "cases.json").read_text())
    assert cases == {
        "important_static": [{"layer": 0, "head": 0}, {"layer": 1, "head": 2}],
        "plastic_unimportant": [{"layer": 0, "head": 1}, {"layer": 1, "head": 1}],
    }
    assert stats["cases"] == {"important_static": 2, "plastic_unimportant": 2}
    rows = (run / "heads.csv").read_text().splitlines()
    assert rows[0] == "layer,head,I_pre,I_post,G_pre,F_pre,U,Urel,case" and len(rows) == 7
    assert rows[1].endswith("important_static") and rows[2].endswith("plastic_unimportant")


def test_top_k_overlap_and_classify_on_hand_values():
    assert top_k_overlap(np.array([3, 2, 1, 0]), np.array([0, 2, 3, 1]), 2) == 0.5
    cases = classify(np.array([1.0, 0.0]), np.array([0.0, 1.0]), CaseThresholds(50, 50, 50, 50))
    assert cases.tolist() == ["important_static", "plastic_unimportant"]


def test_missing_heads_are_named(tmp_path):
    path = tmp_path / "I_pre.jsonl"
    path.write_text('{"layer": 0, "head": 0, "loss_increase": 1}\n{"layer": 1, "head": 1, "loss_increase": 2}\n')
    with pytest.raises(ValueError, match=r"2 of 4 heads missing \(layer, head\): \(0, 1\), \(1, 0\)"):
        read_jsonl(path, "loss_increase")
    path.write_text('{"layer": 0, "head": 0, "loss_increase": 1}\n{"layer": 0, "head": 0, "loss_increase": 2}\n')
    with pytest.raises(ValueError, match="appears twice"):
        read_jsonl(path, "loss_increase")
    path.write_text('{"layer": 0, "loss_increase": 1}\n')
    with pytest.raises(ValueError, match="line 1 lacks"):
        read_jsonl(path, "loss_increase")


def test_measurements_of_different_shapes_are_refused(tmp_path):
    run = _write_run(tmp_path)
    write_jsonl(run / "U.jsonl", {"U": np.ones((2, 2)), "Urel": np.ones((2, 2))})
    with pytest.raises(ValueError, match="disagree"):
        load_measurements(run)


def test_seeds_aggregate_and_figures(tmp_path):
    seeds = [_write_run(tmp_path / "seed-1"), _write_run(tmp_path / "seed-2", scale=2.0)]
    for run in seeds:
        aggregate(run, top_k=2)
    summary = aggregate_seeds(tmp_path, seeds)
    rho = summary["I_pre_vs_Urel"]["spearman_rho"]
    assert summary["seeds"] == ["seed-1", "seed-2"] and rho["std"] == pytest.approx(0)
    assert rho["seeds_ci95"] == pytest.approx([rho["mean"], rho["mean"]])  # both seeds agree: no spread
    header, first = (tmp_path / "heads_across_seeds.csv").read_text().splitlines()[:2]
    assert header.startswith("layer,head,I_pre_mean,I_pre_std") and first.startswith("0,0,1.35,0.45")
    pytest.importorskip("matplotlib")
    paths = plot(seeds[0])
    assert sorted(p.name for p in paths) == [
        "heatmaps.png",
        "scatter_I_pre_vs_G_pre.png",
        "scatter_I_pre_vs_Urel.png",
        "stats.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
