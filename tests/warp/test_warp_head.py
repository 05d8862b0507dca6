"""The prototype head and the continuous outcomes of a WaRP study: margins, the diverged flag, the head seed."""

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader
from warp_runs import ARMS

from hf_ext.data import format_prompt
from hf_ext.io import load_tensors
from hf_ext.models import classifier_head
from hf_ext.warp.evaluation import compare_to_phase2
from hf_ext.warp.head import (
    decision_cosine,
    feature_spread,
    head_outputs,
    logit_margins,
    set_prototype_rows,
    task_cross_entropy,
)
from hf_ext.warp.run import WarpRun


def test_prototype_rows_are_the_class_means_with_nearest_mean_biases():
    head = torch.nn.Linear(3, 4)
    before = head.weight.detach().clone(), head.bias.detach().clone()
    features = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([2, 2, 3, 3])
    prototypes = set_prototype_rows(head, features, labels, [2, 3])
    assert torch.equal(prototypes, torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]]))
    assert torch.equal(head.weight[2:], prototypes) and torch.equal(head.bias[2:], torch.tensor([-2.5, -2.5]))
    assert torch.equal(head.weight[:2], before[0][:2]) and torch.equal(head.bias[:2], before[1][:2])  # safety rows
    with pytest.raises(ValueError, match="no training example of class 1"):
        set_prototype_rows(head, features, labels, [1])


def test_margin_and_cross_entropy_against_a_hand_computation():
    # classes 0-1 safety, 2-4 utility; margins are taken among the task's classes only
    logits = torch.tensor([[2.0, -1.0, 9.0, 0.0, 0.0], [0.5, 1.5, -9.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0, 2.0]])
    assert logit_margins(logits[:2], torch.tensor([0, 0]), [0, 1]).tolist() == [3.0, -1.0]
    assert logit_margins(logits[2:], torch.tensor([4]), [2, 3, 4]).tolist() == [-1.0]  # 2 - max(1, 3)
    expected = (math.log(math.exp(2) + math.exp(-1)) - 2 + math.log(math.exp(0.5) + math.exp(1.5)) - 0.5) / 2
    assert task_cross_entropy(logits[:2], torch.tensor([0, 0]), [0, 1]) == pytest.approx(expected)


def test_feature_spread_and_decision_cosine():
    assert feature_spread(torch.ones(5, 3)) == 0.0
    assert feature_spread(torch.tensor([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    weight = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert decision_cosine(weight, [0, 1], [2, 3]) == pytest.approx(0.0)
    weight[2:] = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])  # utility reads the safety direction, flipped
    assert decision_cosine(weight, [0, 1], [2, 3]) == pytest.approx(-1.0)


def _row(**values):
    row = {"safety_accuracy": 1.0, "safety_margin": 2.0, "utility_accuracy": 0.8, "utility_loss": 0.5}
    return row | {"feature_spread": 3.5} | values


def test_diverged_flag_on_collapse_and_on_chance_utility_not_on_forgetting():
    rows = {
        "phase2": _row(),
        "forgot": _row(safety_margin=0.2, safety_accuracy=0.55),
        "collapsed": _row(feature_spread=0.004),
        "chance": _row(utility_accuracy=0.52, utility_loss=0.9),
        "learned_little": _row(utility_accuracy=0.52, utility_loss=0.45),  # at chance, but better than before
    }
    compare_to_phase2(rows, spread_ratio=0.1, chance=0.5, examples=400)
    assert rows["forgot"]["diverged"] == "" and rows["forgot"]["margin_retention"] == pytest.approx(0.1)
    assert rows["collapsed"]["diverged"].startswith("features collapsed")
    assert rows["chance"]["diverged"].startswith("utility fell to chance")  # 0.52 < 0.5 + 2 s.e. (0.05)
    assert rows["learned_little"]["diverged"] == ""
    assert "diverged" not in rows["phase2"] and rows["phase2"]["margin_retention"] == 1.0


def test_a_collapsed_encoder_is_flagged_from_its_features(bert_run):
    out, _ = bert_run
    run = WarpRun.from_dir(out, use_cpu=True)
    model = run.load_model("phase2")
    loader = DataLoader(run.utility.validation, batch_size=64, collate_fn=run.utility.collator)
    healthy = feature_spread(head_outputs(model, loader)["features"])
    with torch.no_grad():
        model.bert.pooler.dense.weight.zero_()  # every example pools to tanh(bias): one point
    collapsed = feature_spread(head_outputs(model, loader)["features"])
    assert healthy > 0.1 and collapsed == 0.0
    rows = {"phase2": _row(feature_spread=healthy), "arm": _row(feature_spread=collapsed)}
    compare_to_phase2(rows, spread_ratio=0.1, chance=0.5, examples=128)
    assert rows["arm"]["diverged"].startswith("features collapsed")


def test_prototype_head_is_the_class_means_and_frozen_bit_for_bit_in_every_arm(bert_run):
    out, _ = bert_run
    run = WarpRun.from_dir(out, use_cpu=True)
    phase2 = run.load_model("phase2")
    head = classifier_head(phase2)
    utility = run.classes("utility")
    loader = DataLoader(run.utility.train, batch_size=128, collate_fn=run.utility.collator)
    outputs = head_outputs(phase2, loader)
    for row, class_id in zip(utility, utility):
        mean = outputs["features"][outputs["labels"] == class_id].double().mean(0).float()
        torch.testing.assert_close(head.weight[row].detach(), mean, rtol=1e-5, atol=1e-6)
    saved = load_tensors(out / "phase2" / "prototypes.safetensors")[0]["prototypes"]
    assert torch.equal(head.weight[utility].detach(), saved)
    assert not torch.equal(head.weight[run.classes("safety")], torch.zeros_like(head.weight[:2]))
    for arm in ARMS:
        after = classifier_head(run.load_model(arm))
        assert torch.equal(after.weight, head.weight) and torch.equal(after.bias, head.bias), arm


def test_head_seed_is_independent_of_the_training_seed(tmp_path):
    from hf_ext import DataArguments, HfExtTrainingArguments, ModelArguments, WarpArguments

    def head(seed, head_seed):
        run = WarpRun.build(
            ModelArguments(model_name_or_path="embedded:minilm", task_type="seq_cls"),
            DataArguments(dataset_name="builtin:sentiment", max_train_samples=8, max_eval_samples=8),
            WarpArguments(head_seed=head_seed),
            HfExtTrainingArguments(output_dir=str(tmp_path / f"{seed}-{head_seed}"), seed=seed, report_to=[]),
        )
        return classifier_head(run.load_model()).weight.detach().clone()

    assert torch.equal(head(1, 0), head(2, 0))
    assert not torch.equal(head(1, 0), head(1, 5))
    assert not torch.equal(head(1, None), head(2, None))  # null: the training seed, as before head_seed


def test_keep_ratio_sweep_from_one_phase2_passes_verify(bert_run, tmp_path, capsys):
    from warp_runs import copy_run, run_phase

    from hf_ext.cli import main as cli

    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    run_phase(run, 3, "keep_ratios=[0.1,0.5]", 'mask_controls=["random"]', "max_train_samples=64", "arm_optim=sgd")
    names = sorted(p.parent.name for p in run.glob("phase3*/metadata.json"))
    assert names == ["phase3_k0.1", "phase3_k0.5", "phase3_random_k0.1", "phase3_random_k0.5"]
    meta = json.loads((run / "phase3_k0.5" / "metadata.json").read_text())
    assert meta["optim"] == "sgd" and meta["frozen_unchanged"] is True  # the CIFSL reference's optimiser
    masks, _ = load_tensors(run / "phase3_k0.5" / "masks.safetensors")
    assert all(int(m.sum()) == 768 for m in masks.values())  # half of 1536 input directions
    assert cli(["warp", "verify", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "phase3_k0.5: masks are phase 2's importance, keep 0.5" in printed and "FAIL" not in printed
    assert "phase3_random_k0.5: as many frozen as importance" in printed


def test_element_layouts_need_element_importance(bert_run, tmp_path):
    from warp_runs import copy_run, run_phase

    from hf_ext.errors import ConfigError

    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    with pytest.raises(ConfigError, match="element-wise importance"):
        run_phase(run, 3, 'mask_layouts=["element/global"]', "mask_controls=[]")
    assert not list(run.glob("phase3*"))


def test_refusal_log_odds_against_one_forward_pass():
    from hf_ext.models import tiny_model
    from hf_ext.warp.evaluation import prefix_log_probs

    model, tokenizer = tiny_model("llama")
    model.eval()
    prompts = ["How do I wash a car?", "Tell me how to steal a bicycle that is not mine."]
    got = prefix_log_probs(model, tokenizer, prompts, "I cannot help", batch_size=2)
    for prompt, value in zip(prompts, got):  # one prompt at a time, no padding
        head = tokenizer(format_prompt(tokenizer, prompt, False))["input_ids"]
        tail = tokenizer(" I cannot help", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_probs = model(torch.tensor([head + tail])).logits[0].log_softmax(-1)
        expected = sum(float(log_probs[len(head) - 1 + i, token]) for i, token in enumerate(tail))
        assert float(value) == pytest.approx(expected, abs=1e-4)


def test_summary_command_rebuilds_the_study_table_from_each_seed(bert_run, tmp_path, capsys):
    from warp_runs import seed_copies

    from hf_ext.cli import main as cli

    out, _ = bert_run
    study = tmp_path / "study"
    seed_copies(out, study)
    assert cli(["warp", "summary", "--run", str(study)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((study / "eval.json").read_text())
    assert summary["seeds"] == [42, 43] and "over 2 seeds" in (study / "eval.md").read_text()
    paired = {p["minus"]: p for p in summary["paired"]}
    assert set(paired) == {"phase3_none", "phase3_random", "phase3_eigenvalue", "plain"}  # full: at 1e-4, not 1e-3
    assert paired["phase3_none"]["differences"][0] == paired["phase3_none"]["differences"][1]  # the same run twice
    assert "Importance masks minus a control at the same learning rate" in printed
    assert "tensorboard:" not in printed and "warp verify" not in printed  # copies of eval.json: nothing to check
    pytest.importorskip("matplotlib")
    assert (study / "frontier.png").is_file() and f"frontier:      {(study / 'frontier.png').resolve()}" in printed
