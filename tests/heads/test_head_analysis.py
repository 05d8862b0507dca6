import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from hf_ext.heads.analysis import (
    CaseThresholds,
    aggregate,
    aggregate_seeds,
    classify,
    load_measurements,
    plot,
    prediction_flips,
    prune_curve_figure,
    read_jsonl,
    summary,
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


def test_prediction_flips_count_ablations_that_flip_an_example_even_where_accuracy_is_unchanged():
    base = np.array([1.0, 1.0, 0.0])
    ablated = np.array([[[1, 1, 0], [0, 1, 1]], [[1, 0, 0], [1, 1, 0]]], dtype=float)  # [layers, heads, examples]
    # head (0, 1) flips example 0 to wrong and example 2 to right: its accuracy drop is 0, yet 2 predictions flip
    assert prediction_flips(ablated, base) == {
        "heads": 4,
        "heads_flipping_a_prediction": 2,
        "predictions": 12,
        "flipped_predictions": 3,
    }


def _write_examples(run, flip: bool):
    """Per-example ablation files of 2 x 3 heads on 4 examples; with ``flip`` head (1, 2) flips example 0."""
    from hf_ext.io import save_tensors

    base_accuracy = torch.tensor([1.0, 1.0, 0.0, 1.0])
    base_loss = torch.tensor([0.1, 0.2, 1.5, 0.4])
    accuracy = base_accuracy.repeat(2, 3, 1)
    if flip:
        accuracy[1, 2, 0] = 0.0
    tensors = {
        "example_loss": base_loss.repeat(2, 3, 1) + 0.5,
        "example_accuracy": accuracy,
        "base_example_loss": base_loss,
        "base_example_accuracy": base_accuracy,
    }
    save_tensors(run / "I_pre_examples.safetensors", tensors)
    save_tensors(run / "I_post_examples.safetensors", tensors | {"example_accuracy": base_accuracy.repeat(2, 3, 1)})


def test_stats_hold_the_models_accuracy_and_loss_the_flips_and_where_fine_tuning_started(tmp_path):
    from hf_ext.errors import ConfigError

    seeds = []
    for seed, start in ((1, "probed_head"), (2, "random_head")):
        run = _write_run(tmp_path / f"seed-{seed}")
        _write_examples(run, flip=True)
        (run / "study.json").write_text(json.dumps({"finetune_from": start}))
        seeds.append(run)
    stats = aggregate(seeds[0], top_k=2, bootstrap_samples=0)
    assert stats["finetune_from"] == "probed_head"
    assert stats["eval_subset"]["I_pre"] == {"accuracy": 0.75, "loss": pytest.approx(0.55), "examples": 4}
    assert stats["prediction_flips"]["I_pre"] == {
        "heads": 6,
        "heads_flipping_a_prediction": 1,
        "predictions": 24,
        "flipped_predictions": 1,
    }
    assert stats["prediction_flips"]["I_post"]["heads_flipping_a_prediction"] == 0
    text = summary(stats)
    assert "fine-tuned from probed_head" in text
    # no chance.json in this run: the power line without the chance level; 3 of 4 right: s.e. sqrt(.75 * .25 / 4)
    assert "power: 4 evaluation examples; an accuracy near 0.75 on 4 examples has binomial s.e. 0.217 (two" in text
    (seeds[0] / "chance.json").write_text(json.dumps({"majority_class_accuracy": 0.5}))
    assert "power: 4 evaluation examples, chance 0.500 (majority class); " in summary(aggregate(seeds[0], top_k=2))
    assert "before fine-tuning: accuracy 0.750, loss 0.5500 on 4 examples; 1 of 6 single-head ablations" in text
    assert "after fine-tuning" in text and "(0 of 24 predictions)" in text
    aggregate(seeds[1], top_k=2, bootstrap_samples=0)
    with pytest.raises(ConfigError, match="the seeds differ in finetune_from"):
        aggregate_seeds(tmp_path, seeds)
    (seeds[1] / "study.json").write_text(json.dumps({"finetune_from": "probed_head"}))
    aggregate(seeds[1], top_k=2, bootstrap_samples=0)
    assert aggregate_seeds(tmp_path, seeds, bootstrap_samples=0)["seeds"] == ["seed-1", "seed-2"]


def test_the_pruning_figure_draws_every_curve_and_names_the_examples(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        {"share_removed": share, "accuracy": 1 - share, "loss": share, "heads_removed": 0, "removed": []}
        for share in (0.0, 0.5, 1.0)
    ]
    names = ["gradient", "gradient-one-shot", "gradient-reverse", "random-0", "random-1"]
    record = {
        "ablation": "zero",
        "heads": 8,
        "curves": dict.fromkeys(names, rows),
        "ranking_examples": {"split": "validation", "indices": [0, 1, 2]},
        "evaluation_examples": {"split": "test", "indices": [0, 5]},
    }
    figure = prune_curve_figure(record)
    accuracy = figure.axes[0]
    assert len(accuracy.lines) == 5
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == [
        "gradient order, recomputed",
        "gradient order, ranked once",
        "gradient order reversed (most important first)",
        "random order",
    ]
    assert "ranked on 3 validation examples, evaluated on 2 held-out test examples" in figure._suptitle.get_text()
    import matplotlib.pyplot as plt

    plt.close(figure)
