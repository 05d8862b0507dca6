import json
from pathlib import Path

import pytest
import torch
from recipes_util import run_recipe
from tb_events import read_events

from hf_ext.cli import main as cli
from hf_ext.errors import RunDirectoryError

SEED_FILES = [
    "I_pre.jsonl",
    "I_post.jsonl",
    "G_pre.jsonl",
    "U.jsonl",
    "entropy.jsonl",
    "I_pre_examples.safetensors",
    "I_post_examples.safetensors",
    "G_pre_examples.safetensors",
    "entropy_examples.safetensors",
    "study.json",
    "prune_curve.json",
    "prune_curve.png",
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


ROOT = Path(__file__).resolve().parents[2]
# A tiny grouped-query causal LM on the topic task: what the tests and the prune-curve command share.
SETTINGS = [
    "model_name_or_path=tiny:qwen2",
    "task_type=causal_lm",
    "dataset_name=builtin:topic",
    "eval_subset_size=24",
    "per_device_eval_batch_size=8",
]
CURVES = {"gradient", "gradient-one-shot", "gradient-reverse"}


def _closed(curve: list[dict]) -> list[list[int]]:
    """The heads a curve closes, in order."""
    return [head for row in curve for head in row["removed"]]


def test_two_seeds_end_to_end_on_a_tiny_grouped_query_model(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the run's figures, heads plot and the prune curve's figure (the plots extra)
    study = [
        f"output_dir={tmp_path}",
        *SETTINGS,
        "seeds=[1,2]",
        "max_train_samples=64",
        "per_device_train_batch_size=16",
        "learning_rate=3e-3",
        "warmup_steps=0",
        "top_k=3",
        "log_head_importance_steps=2",
        "logging_steps=2",
        "bootstrap_samples=50",
        "prune_step=0.25",
    ]
    runs = run_recipe("head_plasticity", "head_plasticity_minilm_rotten_tomatoes.json", *study)
    assert [r.name for r in runs] == ["seed-1", "seed-2"]
    subset = json.loads((tmp_path / "eval_subset.json").read_text())
    assert subset["size"] == 24 and subset["seed"] == 999 and len(set(subset["indices"])) == 24
    for run in runs:
        for name in SEED_FILES:
            assert (run / name).is_file(), f"{run.name}/{name}"
        lines = (run / "U.jsonl").read_text().splitlines()
        assert len(lines) == 2 * 4 and all(json.loads(line)["U"] > 0 for line in lines)  # every head was trained
        stats = json.loads((run / "stats.json").read_text())
        assert stats["heads"] == 8 and -1 <= stats["I_pre_vs_Urel"]["spearman_rho"] <= 1
    assert (tmp_path / "heads_across_seeds.csv").is_file()
    across = json.loads((tmp_path / "stats_across_seeds.json").read_text())
    assert across["seeds"] == ["seed-1", "seed-2"]
    events = read_events(runs[0] / "runs")
    assert {"train/head_importance/layer_0", "train/heads/I_pre_vs_Urel_spearman_rho"} <= set(events.Tags()["scalars"])
    assert {"head_importance/heatmap", "heads/heatmaps", "heads/scatter_I_pre_vs_Urel"} <= set(events.Tags()["images"])

    stats = json.loads((runs[0] / "stats.json").read_text())
    assert stats["bootstrap_samples"] == 50 and len(stats["I_pre_vs_Urel"]["spearman_rho_ci95"]) == 2
    assert (
        len(stats["H_pre_vs_Urel"]["spearman_rho_ci95"]) == 2
        and "H_pre" in (runs[0] / "heads.csv").read_text().splitlines()[0]
    )
    assert stats["finetune_from"] == "pretrained_head"  # a causal LM is not probed
    for name in ("I_pre", "I_post"):
        assert set(stats["eval_subset"][name]) == {"accuracy", "loss", "examples"}
        assert stats["eval_subset"][name]["examples"] == 24 and stats["eval_subset"][name]["loss"] > 0
        assert stats["prediction_flips"][name]["predictions"] == 8 * 24
    printed = capsys.readouterr().out
    assert "before fine-tuning: accuracy" in printed and "single-head ablations flip a prediction" in printed
    assert "power: 24 evaluation examples; an accuracy near" in printed  # a causal LM: no majority-class chance
    assert not (runs[0] / "chance.json").exists()
    curves = json.loads((runs[0] / "prune_curve.json").read_text())
    assert set(curves["curves"]) == CURVES | {"random-0", "random-1", "random-2"} and curves["heads"] == 8
    assert [row["heads_removed"] for row in curves["curves"]["gradient"]] == [0, 2, 4, 6, 8]
    assert _closed(curves["curves"]["gradient-reverse"]) == _closed(curves["curves"]["gradient-one-shot"])[::-1]
    ranking, evaluation = curves["ranking_examples"], curves["evaluation_examples"]
    assert ranking["split"] == "validation" and ranking["indices"] == subset["indices"]
    assert evaluation["split"] == "test" and len(evaluation["indices"]) == 24  # as many as rank (the default)
    assert not set(ranking["hashes"]) & set(evaluation["hashes"])  # no example both ranks and evaluates
    assert "H_pre_vs_Urel" in across and len(across["I_pre_vs_Urel"]["spearman_rho"]["seeds_ci95"]) == 2

    # a rerun keeps the finished seeds and runs the unfinished one; with every seed finished it refuses
    kept = (runs[0] / "heads.csv").stat().st_mtime_ns
    (runs[1] / "heads.csv").unlink()
    run_recipe("head_plasticity", "head_plasticity_minilm_rotten_tomatoes.json", *study)
    assert (runs[1] / "heads.csv").is_file() and (runs[0] / "heads.csv").stat().st_mtime_ns == kept
    assert f"{runs[0]} is finished, keeping it" in capsys.readouterr().out
    with pytest.raises(RunDirectoryError, match="already holds a finished run"):
        run_recipe("head_plasticity", "head_plasticity_minilm_rotten_tomatoes.json", *study)

    capsys.readouterr()
    (runs[0] / "heads.csv").unlink()
    assert cli(["heads", "aggregate", "--run", str(tmp_path), "--top-k", "2", "--metric", "accuracy"]) == 0
    stats = json.loads((runs[0] / "stats.json").read_text())
    assert (runs[0] / "heads.csv").is_file() and (stats["top_k"], stats["importance_metric"]) == (2, "accuracy")
    assert stats["bootstrap_samples"] == 50 and stats["cases_by"] == "Urel"  # kept from the run
    assert cli(["heads", "plot", "--run", str(runs[1])]) == 0
    assert "heatmaps.png" in capsys.readouterr().out

    config = ROOT / "recipes" / "configs" / "head_plasticity_minilm_rotten_tomatoes.json"
    overrides = [f"output_dir={tmp_path}", *SETTINGS, "prune_random_orders=1", "prune_step=0.5"]
    out = tmp_path / "initial_curve.json"
    assert (
        cli(["heads", "prune-curve", str(config), *overrides, "--model", str(runs[0] / "initial"), "--out", str(out)])
        == 0
    )
    record = json.loads(out.read_text())
    assert set(record["curves"]) == CURVES | {"random-0"} and (tmp_path / "initial_curve.png").is_file()
    assert record["curves"]["gradient"][0]["loss"] > 0 and len(record["curves"]["gradient"]) == 3
    assert record["evaluation_examples"] == curves["evaluation_examples"]  # the run's held-out examples
    assert "gradient-reverse: accuracy (loss) at heads removed 0%:" in capsys.readouterr().out
    wrong_run = [f"output_dir={tmp_path / 'elsewhere'}", *SETTINGS]
    assert cli(["heads", "prune-curve", str(config), *wrong_run, "--model", str(runs[0] / "initial")]) == 2
    assert "eval_subset.json not found" in capsys.readouterr().err
    no_curve = [f"output_dir={tmp_path}", *SETTINGS, "prune_step=0"]
    assert cli(["heads", "prune-curve", str(config), *no_curve, "--model", str(runs[0] / "initial")]) == 2
    assert "prune_step=0" in capsys.readouterr().err


def test_aggregate_of_a_run_with_missing_heads_is_an_error(tmp_path, capsys):
    (tmp_path / "I_pre.jsonl").write_text('{"layer": 0, "head": 1, "loss_increase": 0.5}\n')
    assert cli(["heads", "aggregate", "--run", str(tmp_path)]) == 2
    assert "heads missing" in capsys.readouterr().err


@pytest.fixture
def heads_seen(monkeypatch):
    """The task heads of a run: ``random`` and ``probed`` (before and after the run's first probe, before any
    other head initialisation is probed) and ``start`` (the model's head when fine-tuning starts)."""
    import hf_ext.heads.study as study
    from hf_ext.probe import head_state

    seen = {}
    fit_probe = study.fit_probe

    def recording_fit_probe(model, *args, **kwargs):
        first = "probed" not in seen
        if first:
            seen["random"] = head_state(model)
        result = fit_probe(model, *args, **kwargs)
        if first:
            seen["probed"] = head_state(model)
        return result

    class RecordingTrainer(study.HfExtTrainer):
        def train(self, *args, **kwargs):
            seen["start"] = head_state(self.model)
            return super().train(*args, **kwargs)

    monkeypatch.setattr(study, "fit_probe", recording_fit_probe)
    monkeypatch.setattr(study, "HfExtTrainer", RecordingTrainer)
    return seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_starts_from_the_probed_head_or_the_random_one_and_probe_stability_is_reported(
    tmp_path, heads_seen
):
    """seq_cls on a tiny BERT: by default (LP-FT) the head at the start of fine-tuning is the probe's, bit for bit,
    though other head initialisations were probed since; with finetune_from=random_head it is the random head, and
    the model fine-tuning starts from is the one a run without probe starts from."""
    from safetensors.torch import load_file

    common = [
        "head_plasticity_minilm_rotten_tomatoes.json",
        "model_name_or_path=tiny:bert",
        "seeds=[1]",
        "eval_subset_size=24",
        "prune_eval_size=16",
        "max_train_samples=64",
        "per_device_train_batch_size=16",
        "per_device_eval_batch_size=8",
        "warmup_steps=0",
        "top_k=3",
        "log_head_importance_steps=0",
        "probe_epochs=1",
        "probe_seeds=[7]",
    ]
    runs, seen = {}, {}
    for name, extra in (
        ("probed", []),
        ("random", ["finetune_from=random_head"]),
        ("none", ["probe_before_importance=false", "finetune_from=random_head"]),
    ):
        heads_seen.clear()
        runs[name] = run_recipe("head_plasticity", *common[:1], f"output_dir={tmp_path / name}", *common[1:], *extra)
        runs[name] = runs[name][0]
        seen[name] = dict(heads_seen)
    assert _same(seen["probed"]["start"], seen["probed"]["probed"])
    assert not _same(seen["probed"]["probed"], seen["probed"]["random"])  # the probe moved the head
    assert _same(seen["random"]["start"], seen["random"]["random"])
    assert "probed" not in seen["none"] and _same(seen["none"]["start"], seen["random"]["start"])
    for name, start in (("probed", "probed_head"), ("random", "random_head"), ("none", "random_head")):
        assert json.loads((runs[name] / "study.json").read_text())["finetune_from"] == start
        assert json.loads((runs[name] / "stats.json").read_text())["finetune_from"] == start
    assert len(json.loads((runs["probed"] / "prune_curve.json").read_text())["evaluation_examples"]["indices"]) == 16
    probe = json.loads((runs["probed"] / "probe.json").read_text())
    assert probe["head_modules"] == ["classifier", "bert.pooler"] and 0 <= probe["accuracy"] <= 1
    assert probe["loss"] > 0 and probe["stability"]["probe_seeds"]["7"]["probe_loss"] > 0
    assert probe["steps"] == 4 and set(probe["stability"]["probe_seeds"]) == {"7"}
    assert probe["stability"]["chance_overlap"] == 3 / 8
    assert not (runs["none"] / "probe.json").exists()
    initial = {name: load_file(runs[name] / "initial" / "model.safetensors") for name in runs}
    assert _same(initial["random"], initial["none"])
    assert torch.equal(initial["probed"]["classifier.weight"], seen["probed"]["probed"]["classifier.weight"])
    stats = json.loads((runs["probed"] / "stats.json").read_text())
    pre = stats["eval_subset"]["I_pre"]  # the model I_pre was measured on is the probed one: the probe's numbers
    assert pre["accuracy"] == pytest.approx(probe["accuracy"]) and pre["loss"] == pytest.approx(
        probe["loss"], rel=1e-5
    )


def _mnli_like(path, n):
    """Rows as `datasets` exports GLUE MNLI (premise, hypothesis, label 0/1/2 = entailment/neutral/contradiction,
    idx), from the built-in topic task."""
    from hf_ext.tasks import load_builtin_task, task_label_names

    split = load_builtin_task("topic")["train"]
    names = task_label_names("topic")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic = names[(split["label"][i] + i % 3) % len(names)] if i % 3 else names[split["label"][i]]
            hypothesis = f"This text is about {topic}." if i % 3 != 1 else "The author wrote it on a Monday."
            row = {"premise": split["text"][i], "hypothesis": hypothesis, "label": [0, 1, 2][i % 3], "idx": i}
            f.write(json.dumps(row) + "\n")
    return path


def test_the_glue_style_pair_config_reads_local_files_and_tokenises_both_segments(tmp_path):
    from hf_ext.data import prepare_data
    from hf_ext.heads.study import HEAD_STUDY_ARGUMENT_TYPES
    from hf_ext.models import load_tokenizer
    from hf_ext.parsing import parse_config

    files = [f"train_file={_mnli_like(tmp_path / 'train.jsonl', 90)}"]
    files.append(f"validation_file={_mnli_like(tmp_path / 'validation_matched.jsonl', 30)}")
    config = ROOT / "recipes" / "configs" / "head_plasticity_mnli_local.json"
    _, data_args, _, _ = parse_config(HEAD_STUDY_ARGUMENT_TYPES, [str(config), *files])
    tokenizer = load_tokenizer("embedded:minilm")
    data = prepare_data(data_args, tokenizer, "seq_cls")
    assert len(data.labels) == 3
    first = data.validation[0]
    assert first["input_ids"].count(tokenizer.sep_token_id) == 2 and 1 in first["token_type_ids"]
    runs = run_recipe(
        "head_plasticity",
        "head_plasticity_mnli_local.json",
        f"output_dir={tmp_path / 'run'}",
        *files,
        "model_name_or_path=tiny:bert",
        "seeds=[1]",
        "eval_subset_size=24",
        "per_device_eval_batch_size=8",
        "per_device_train_batch_size=16",
        "warmup_steps=0",
        "top_k=3",
        "probe_epochs=1",
        "prune_step=0.5",
        "bootstrap_samples=20",
        "report_to=[]",
    )
    assert len(json.loads((runs[0] / "final" / "config.json").read_text())["id2label"]) == 3
    assert (runs[0] / "stats.json").is_file()
    # no test split: the curves are evaluated on the 6 validation examples outside the evaluation subset
    curves = json.loads((runs[0] / "prune_curve.json").read_text())
    subset = json.loads((tmp_path / "run" / "eval_subset.json").read_text())["indices"]
    evaluation = curves["evaluation_examples"]
    assert evaluation["split"] == "validation" and len(evaluation["indices"]) == 6
    assert sorted(subset + evaluation["indices"]) == list(range(30))
