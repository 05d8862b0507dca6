import json

import torch
from recipes_util import run_recipe
from tb_events import read_events

from hf_ext.cli import main as cli

SEED_FILES = [
    "I_pre.jsonl",
    "I_post.jsonl",
    "G_pre.jsonl",
    "U.jsonl",
    "heads.csv",
    "stats.json",
    "cases.json",
    "scatter_I_pre_vs_Urel.png",
    "scatter_I_pre_vs_G_pre.png",
    "stats.png",
    "heatmaps.png",
    "initial/config.json",
    "final/config.json",
]


def test_two_seeds_end_to_end_on_a_tiny_grouped_query_model(tmp_path, capsys):
    runs = run_recipe(
        "head_plasticity",
        "head_plasticity_minilm_topic.json",
        f"output_dir={tmp_path}",
        "model_name_or_path=tiny:qwen2",
        "task_type=causal_lm",
        "dataset_name=builtin:topic",
        "seeds=[1,2]",
        "eval_subset_size=24",
        "max_train_samples=64",
        "per_device_train_batch_size=16",
        "per_device_eval_batch_size=8",
        "learning_rate=3e-3",
        "warmup_steps=0",
        "top_k=3",
        "log_head_importance_steps=2",
        "logging_steps=2",
    )
    assert [r.name for r in runs] == ["seed-1", "seed-2"]
    for run in runs:
        for name in SEED_FILES:
            assert (run / name).is_file(), f"{run.name}/{name}"
        lines = (run / "U.jsonl").read_text().splitlines()
        assert len(lines) == 2 * 4 and all(json.loads(line)["U"] > 0 for line in lines)  # every head was trained
        stats = json.loads((run / "stats.json").read_text())
        assert stats["heads"] == 8 and -1 <= stats["I_pre_vs_Urel"]["spearman_rho"] <= 1
    subset = json.loads((tmp_path / "eval_subset.json").read_text())
    assert subset["size"] == 24 and subset["seed"] == 999 and len(set(subset["indices"])) == 24
    assert (tmp_path / "heads_across_seeds.csv").is_file()
    across = json.loads((tmp_path / "stats_across_seeds.json").read_text())
    assert across["seeds"] == ["seed-1", "seed-2"]
    events = read_events(runs[0] / "runs")
    assert {"train/head_importance/layer_0", "train/heads/I_pre_vs_Urel_spearman_rho"} <= set(events.Tags()["scalars"])
    assert {"head_importance/heatmap", "heads/heatmaps", "heads/scatter_I_pre_vs_Urel"} <= set(events.Tags()["images"])

    capsys.readouterr()
    (runs[0] / "heads.csv").unlink()
    assert cli(["heads", "aggregate", "--run", str(tmp_path), "--top-k", "2"]) == 0
    assert (runs[0] / "heads.csv").is_file() and json.loads((runs[0] / "stats.json").read_text())["top_k"] == 2
    assert cli(["heads", "plot", "--run", str(runs[1])]) == 0
    assert "heatmaps.png" in capsys.readouterr().out


def test_aggregate_of_a_run_with_missing_heads_is_an_error(tmp_path, capsys):
    (tmp_path / "I_pre.jsonl").write_text('{"layer": 0, "head": 1, "loss_increase": 0.5}\n')
    assert cli(["heads", "aggregate", "--run", str(tmp_path)]) == 2
    assert "heads missing" in capsys.readouterr().err


def test_probe_before_importance_restores_the_random_head_and_reports_stability(tmp_path):
    """seq_cls on a tiny BERT: the probe writes probe.json (with the stability of I_pre over another head
    initialisation); the model fine-tuning starts from is the one a run without probe starts from, unless LP-FT."""
    from safetensors.torch import load_file

    common = [
        "head_plasticity_minilm_topic.json",
        "model_name_or_path=tiny:bert",
        "seeds=[1]",
        "eval_subset_size=24",
        "max_train_samples=64",
        "per_device_train_batch_size=16",
        "per_device_eval_batch_size=8",
        "warmup_steps=0",
        "top_k=3",
        "log_head_importance_steps=0",
        "probe_epochs=1",
    ]
    runs = {}
    for name, extra in (("probe", ["probe_seeds=[7]"]), ("none", ["probe_before_importance=false"])):
        runs[name] = run_recipe("head_plasticity", *common[:1], f"output_dir={tmp_path / name}", *common[1:], *extra)[
            0
        ]
    run_recipe("head_plasticity", *common[:1], f"output_dir={tmp_path / 'lpft'}", *common[1:], "keep_probe_head=true")
    probe = json.loads((runs["probe"] / "probe.json").read_text())
    assert probe["head_modules"] == ["classifier", "bert.pooler"] and 0 <= probe["accuracy"] <= 1
    assert probe["steps"] == 4 and set(probe["stability"]["probe_seeds"]) == {"7"}
    assert probe["stability"]["chance_overlap"] == 3 / 8
    assert not (runs["none"] / "probe.json").exists()
    initial = {name: load_file(runs[name] / "initial" / "model.safetensors") for name in runs}
    lpft = load_file(tmp_path / "lpft" / "seed-1" / "initial" / "model.safetensors")
    assert all(torch.equal(initial["probe"][k], initial["none"][k]) for k in initial["none"])
    assert not torch.equal(lpft["classifier.weight"], initial["none"]["classifier.weight"])
