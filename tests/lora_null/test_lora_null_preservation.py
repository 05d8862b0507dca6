import json

import pytest
import torch
from recipes_util import run_recipe

from hf_ext.errors import ConfigError
from hf_ext.lora_null.preservation import (
    COMPARED,
    FrozenProbe,
    _comparisons,
    _verdict,
    overshoots,
    similarity_structure,
)

RECIPE = ("lora_null_preservation", "lora_null_preservation_minilm.json")
TINY = (
    "model_name_or_path=tiny:bert",
    'lora_target_modules=["query","value"]',
    "lora_r=4",
    "dataset_name=builtin:sentiment",
    "max_train_samples=64",
    "max_eval_samples=64",
    "seeds=[1,2]",
    "calib_dataset=builtin:topic",
    "calib_samples=64",
    "preservation_dataset=builtin:topic",
    "preservation_split=test",
    "preservation_samples=40",
    "probe_dataset=builtin:safety",
    "probe_train_samples=64",
    "probe_samples=40",
    "lora_learning_rates=[0.001,0.01]",
    "null_frozen_A_learning_rates=[0.01,0.05]",
    "warmup_steps=0",
    "learning_rate=0.01",
    "head_learning_rate=0.01",
    "report_to=[]",
)


def test_the_frozen_probe_reads_separable_classes_and_loses_on_moved_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.1 * x[:, 1] > 0).long()
    probe = FrozenProbe.fit(x[:200], y[:200], classes=2)
    loss, accuracy = probe.score(x[200:], y[200:])
    assert accuracy > 0.9 and loss < 0.3
    moved_loss, moved_accuracy = probe.score(x[200:].roll(1, dims=1), y[200:])  # the features it reads moved away
    assert moved_loss > loss + 0.3 and moved_accuracy < 0.75
    noise = torch.randint(0, 2, (400,), generator=g)
    _, chance = FrozenProbe.fit(x[:200], noise[:200], classes=2).score(x[200:], noise[200:])
    assert abs(chance - 0.5) < 0.12


def test_the_similarity_structure_is_one_for_the_same_embeddings_and_near_chance_for_unrelated_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 32, generator=g, dtype=torch.float64)
    assert similarity_structure(x, x, 10) == pytest.approx((1.0, 1.0))
    rho, knn = similarity_structure(x, x + 0.3 * torch.randn(200, 32, generator=g, dtype=torch.float64), 10)
    assert 0.8 < rho < 1 and 0.3 < knn < 1
    rho, knn = similarity_structure(x, torch.randn(200, 32, generator=g, dtype=torch.float64), 10)
    assert abs(rho) < 0.05 and knn < 3 * 10 / 199
    with pytest.raises(ConfigError, match="knn_k=200 needs 0 < k < the number of texts"):
        similarity_structure(x, x, 200)


def _rows(shift: float) -> list[dict]:
    """Synthetic runs: the same frontier for both methods, the second one higher by ``shift`` (mean over seeds) at
    every loss."""
    rows = []
    for seed in (1, 2, 3):
        for method, offset in (("lora", 0.0), ("null_frozen_A", shift + 0.01 * (seed - 2))):
            for lr, loss in ((1e-3, 0.7), (2e-3, 0.6), (4e-3, 0.5)):
                value = 1 - (0.7 - loss) + offset + 0.001 * seed
                row = {"method": method, "learning_rate": lr, "seed": seed, "task_eval_loss": loss + 0.001 * seed}
                rows.append(row | {o: value if higher else -value for o, higher in COMPARED.items()})
    return rows


@pytest.mark.parametrize("shift, word", [(0.05, "preserves more"), (-0.05, "preserves less"), (0.0, "no difference")])
def test_the_matched_loss_verdict_reads_the_interval_in_each_outcome_s_direction(shift, word):
    from hf_ext.lora_null.preservation import PreservationArguments

    study = PreservationArguments(methods=["lora", "null_frozen_A"])
    comparisons = _comparisons(_rows(shift), study)
    assert list(comparisons) == ["null_frozen_A"] and list(comparisons["null_frozen_A"]) == list(COMPARED)
    for outcome, comparison in comparisons["null_frozen_A"].items():
        assert comparison["seeds"] == [1, 2, 3] and len(comparison["levels"]) == 3
        sign = 1 if COMPARED[outcome] else -1
        assert comparison["levels"][1]["mean"] == pytest.approx(sign * shift)
        assert _verdict(comparison, outcome).count(word) == 3


def test_runs_past_the_lowest_loss_leave_the_frontier():
    from hf_ext.lora_null.preservation import PreservationArguments

    rows = _rows(0.05)
    # an overshoot per seed: a larger step than 4e-3 that fits worse and wrecks every outcome
    worst = {o: -5.0 if higher else 5.0 for o, higher in COMPARED.items()}
    damaged = [
        r | {"learning_rate": 8e-3, "task_eval_loss": 0.65} | worst
        for r in rows
        if r["method"] == "lora" and r["learning_rate"] == 4e-3
    ]
    assert len(damaged) == 3
    assert overshoots(rows) == [] and overshoots(rows + damaged) == damaged
    study = PreservationArguments(methods=["lora", "null_frozen_A"])
    for outcome, comparison in _comparisons(rows + damaged, study)["null_frozen_A"].items():
        assert _verdict(comparison, outcome).count("preserves more") == 3


def test_the_recipe_writes_a_row_per_method_lr_and_seed_and_the_matched_loss_comparisons(tmp_path, capsys):
    out = tmp_path / "run"
    run_recipe(*RECIPE, f"output_dir={out}", 'methods=["lora","null_frozen_A","head_only"]', *TINY)
    summary = json.loads((out / "preservation.json").read_text())
    runs = [(r["method"], r["learning_rate"], r["seed"]) for r in summary["rows"]]
    expected = [("lora", 0.001), ("lora", 0.01), ("null_frozen_A", 0.01), ("null_frozen_A", 0.05), ("head_only", 0.01)]
    assert runs == [(m, lr, s) for s in (1, 2) for m, lr in expected]
    assert all(r["task_eval_loss"] > 0 and 0 <= r["task_accuracy"] <= 1 for r in summary["rows"])
    head_only = [r for r in summary["rows"] if r["method"] == "head_only"]
    for row in head_only:  # no adapter moved: the control is exactly the base model
        assert row["unseen_spearman"] == pytest.approx(1, abs=1e-9) and row["unseen_knn"] == 1
        assert row["probe_log_loss"] == pytest.approx(summary["base_model"]["probe_log_loss"], abs=1e-9)
    assert (
        summary["sample_sizes"] | {"seeds": 2, "unseen_texts": 40, "calib_like_texts": 40} == summary["sample_sizes"]
    )
    assert summary["chance"]["unseen_knn"] == pytest.approx(10 / 39)
    assert set(summary["comparisons"]["null_frozen_A"]) == set(COMPARED)  # compared, or skipped with the reason
    assert all("levels" in c or "skipped" in c for c in summary["comparisons"]["null_frozen_A"].values())
    assert {m["method"] for m in summary["methods"]} == {"lora", "null_frozen_A", "head_only"}
    assert (out / "preservation.csv").read_text().count("\n") == 11
    printed = capsys.readouterr().out
    for needle in ("sample sizes:", "chance:", "base model: frozen probe", "power:", "| lora | 0.001 | 2 |"):
        assert needle in printed
    pytest.importorskip("matplotlib")  # the figure (the plots extra)
    assert (out / "preservation.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "override, message",
    [
        ('methods=["x"]', "must be a non-empty list of distinct"),
        ('methods=["null_frozen_A"]', "must include lora"),
        ("lora_learning_rates=[]", "lora_learning_rates is empty: give the learning rates to sweep for lora"),
        ("corda_kpm_learning_rates=[0.001,0.001]", "must hold distinct positive numbers"),
        ("mode=null_projection", "mode do not apply to the preservation recipe"),
        ("probe_dataset=corpus:chitchat", "probe_dataset='corpus:chitchat' has no labels"),
        ("probe_dataset=builtin:nope", "probe_dataset='builtin:nope': unknown built-in task"),
        ("knn_k=40", "leaves 40 texts outside the calibration and task data, need more than knn_k=40"),
    ],
)
def test_bad_preservation_arguments_are_refused_in_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        run_recipe(*RECIPE, f"output_dir={tmp_path}", *TINY, override)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "preservation.json").exists()
