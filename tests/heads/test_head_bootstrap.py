"""Bootstrap over evaluation examples from the per-example files a head-study seed saves."""

import csv
import json

import numpy as np
import pytest
import torch

from hf_ext.errors import DataError
from hf_ext.heads.analysis import aggregate, write_jsonl
from hf_ext.heads.bootstrap import example_replicates
from hf_ext.io import save_tensors

LAYERS, HEADS, N = 3, 4, 200


def _run(tmp_path, examples=N):
    """A seed directory with per-example values whose per-head means and spreads are known."""
    rng = np.random.default_rng(0)
    measured = {}
    shift = np.arange(LAYERS * HEADS, dtype=float).reshape(LAYERS, HEADS) / 10  # head (l, h) costs (4l + h) / 10
    for name in ("I_pre", "I_post"):
        base = rng.normal(1.0, 0.1, size=N)
        loss = base + shift[..., None] + rng.normal(0, 0.5, size=(LAYERS, HEADS, N))
        accuracy = (rng.random((LAYERS, HEADS, N)) > 0.3).astype(float)
        base_accuracy = np.ones(N)
        measured[name] = loss, base
        save_tensors(
            tmp_path / f"{name}_examples.safetensors",
            {
                "example_loss": torch.tensor(loss[..., :examples]).float(),
                "example_accuracy": torch.tensor(accuracy).float(),
                "base_example_loss": torch.tensor(base).float(),
                "base_example_accuracy": torch.tensor(base_accuracy).float(),
            },
        )
        write_jsonl(
            tmp_path / f"{name}.jsonl",
            {"loss_increase": (loss - base).mean(-1), "accuracy_drop": 1 - accuracy.mean(-1)},
        )
    gradient = rng.normal(size=(N, LAYERS, HEADS))
    save_tensors(tmp_path / "G_pre_examples.safetensors", {"example_gradient": torch.tensor(gradient).float()})
    write_jsonl(
        tmp_path / "G_pre.jsonl",
        {"gradient": np.abs(gradient).sum(0), "fisher": (gradient**2).mean(0), "gradient_layer_normalised": shift},
    )
    write_jsonl(tmp_path / "U.jsonl", {"U": shift + rng.normal(size=shift.shape), "Urel": shift})
    return measured["I_pre"]


def test_replicates_center_on_the_measurement_with_the_spread_of_a_mean(tmp_path):
    loss, base = _run(tmp_path)
    replicates = example_replicates(tmp_path, "loss", 2000, seed=3)
    assert set(replicates) == {"I_pre", "I_post", "G_pre", "F_pre"} and replicates["I_pre"].shape == (2000, 3, 4)
    difference = loss - base  # per example
    np.testing.assert_allclose(replicates["I_pre"].mean(0), difference.mean(-1), atol=0.01)
    standard_error = difference.std(-1) / np.sqrt(N)
    np.testing.assert_allclose(replicates["I_pre"].std(0), standard_error, rtol=0.12)
    accuracy = example_replicates(tmp_path, "accuracy", 500)["I_pre"]
    assert accuracy.mean() == pytest.approx(0.3, abs=0.03)  # accuracy drop = 1 - accuracy with the head ablated


def test_aggregate_writes_intervals_that_hold_the_estimates(tmp_path):
    _run(tmp_path)
    stats = aggregate(tmp_path, top_k=3, bootstrap_samples=300)
    assert stats["bootstrap_samples"] == 300 and stats["importance_metric"] == "loss"
    for key in ("spearman_rho", "within_layer_rho", "partial_rho_given_layer", "top3_overlap"):
        low, high = stats["I_pre_vs_Urel"][f"{key}_ci95"]
        assert low <= high
    low, high = stats["I_pre_vs_Urel"]["spearman_rho_ci95"]
    assert low <= stats["I_pre_vs_Urel"]["spearman_rho"] <= high and 0.8 < low  # planted: I_pre follows Urel
    assert "spearman_rho_ci95" not in aggregate(tmp_path, top_k=3, bootstrap_samples=0)["I_pre_vs_U"]
    aggregate(tmp_path, top_k=3, bootstrap_samples=100)
    with open(tmp_path / "heads.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and float(rows[5]["I_pre_ci95_low"]) <= float(rows[5]["I_pre"]) <= float(
        rows[5]["I_pre_ci95_high"]
    )
    assert json.loads((tmp_path / "stats.json").read_text())["cases_by"] == "Urel"


def test_per_example_files_that_disagree_on_the_examples_are_refused(tmp_path):
    _run(tmp_path, examples=N - 1)
    with pytest.raises(DataError, match="different numbers of examples"):
        example_replicates(tmp_path, "loss", 10)


def test_a_run_without_per_example_files_gets_no_intervals(tmp_path):
    _run(tmp_path)
    (tmp_path / "G_pre_examples.safetensors").unlink()
    assert example_replicates(tmp_path, "loss", 10) is None
    assert aggregate(tmp_path, top_k=3)["bootstrap_samples"] == 0
