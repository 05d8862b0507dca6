"""recipes/warp.py end to end: its run directory, TensorBoard, verify/eval (bad inputs: test_bad_inputs.py)."""

import json

import pytest
import torch
from recipes_util import run_recipe
from tb_events import read_events
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from warp_runs import ARMS, PHASE_FILES, TINY_LLAMA

from hf_ext.cli import main as cli
from hf_ext.io import load_tensors


def test_all_phases_write_the_documented_run_directory(bert_run):
    out, summary = bert_run
    for name in PHASE_FILES:
        if not name.endswith(".png"):  # figures: at the end, with matplotlib (the plots extra)
            assert (out / name).is_file(), name
    assert not any((out / arm / "model").exists() for arm in ARMS)  # deltas only, unless save_full_models
    rows = json.loads((out / "eval.json").read_text())
    assert list(rows) == ["phase2", *ARMS] == list(summary["arms"])
    assert rows["phase2"]["safety_accuracy"] > 0.75  # the safety task was learned in phase 2
    assert rows["phase3"]["utility_accuracy"] > 0.75
    assert rows["full_lr0.0001"]["label"] == "plain, full fine-tune, lr 0.0001"
    for arm, row in rows.items():
        assert summary["arms"][arm]["per_seed"] == {42: row}
        assert summary["arms"][arm]["safety_accuracy"]["mean"] == row["safety_accuracy"]
    assert summary["eval_examples"] == {"safety": 96, "utility": 96}
    pytest.importorskip("matplotlib")
    assert [name for name in PHASE_FILES if name.endswith(".png") and not (out / name).is_file()] == []


def test_arms_train_what_they_say(bert_run):
    out, _ = bert_run
    meta = {arm: json.loads((out / arm / "metadata.json").read_text()) for arm in ARMS}
    phase2_masks, _ = load_tensors(out / "phase2" / "masks.safetensors")
    for arm in ("phase3", "phase3_random", "phase3_eigenvalue"):
        assert meta[arm]["frozen_unchanged"] is True
        assert meta[arm]["frozen_entries"] == {n: 154 * 384 for n in phase2_masks}  # frozen columns x d_out
    assert set(meta["phase3_none"]["frozen_entries"].values()) == {0}
    random, _ = load_tensors(out / "phase3_random" / "masks.safetensors")
    eigen, _ = load_tensors(out / "phase3_eigenvalue" / "masks.safetensors")
    for name, mask in phase2_masks.items():
        assert eigen[name][:154].all() and not eigen[name][154:].any()  # directions sorted by eigenvalue
        assert int(random[name].sum()) == 154 and not torch.equal(random[name], mask)
    assert meta["plain"]["learning_rate"] == 1e-3 and meta["plain_lr0.0001"]["learning_rate"] == 1e-4
    assert meta["plain"]["trainable_parameters"] == 2 * 384 * 1536  # the targets; the prototype head is frozen
    assert meta["full_lr0.0001"]["trainable_parameters"] > 22_000_000  # every parameter of MiniLM
    assert meta["phase3"]["trainable_parameters"] == meta["plain"]["trainable_parameters"]  # C, not also W


def test_basis_importance_and_masks_files(bert_run):
    out, _ = bert_run
    basis, _ = load_tensors(out / "phase1" / "basis.safetensors")
    names = ["bert.encoder.layer.4.output.dense", "bert.encoder.layer.5.output.dense"]
    assert sorted(basis) == sorted([f"{n}.U" for n in names] + [f"{n}.eigenvalues" for n in names])
    importance, _ = load_tensors(out / "phase2" / "importance.safetensors")
    masks, _ = load_tensors(out / "phase2" / "masks.safetensors")
    meta = json.loads((out / "phase2" / "metadata.json").read_text())
    for name in names:
        assert importance[name].shape == (1536,) and masks[name].dtype == torch.bool  # granularity input
        assert int(masks[name].sum()) == round(0.1 * 1536) == meta["frozen"][name]
        assert importance[name][masks[name]].min() >= importance[name][~masks[name]].max()
        versus = meta["importance_vs_eigenvalue"][name]
        assert versus["top_k"] == 154 and versus["chance_overlap"] == pytest.approx(154**2 / 1536)
        assert -1 <= versus["spearman"] <= 1 and 0 <= versus["overlap"] <= 154
    assert meta["steps"] == 16 and meta["skipped_nonfinite_steps"] == 0 and meta["samples"] == 512
    phase3 = json.loads((out / "phase3" / "metadata.json").read_text())
    assert phase3["frozen_unchanged"] is True and set(phase3["frozen_max_deviation"].values()) == {0.0}


def test_models_load_with_plain_transformers(bert_run, tmp_path):
    out, _ = bert_run
    assert cli(["warp", "apply-delta", "--run", str(out), "--phase", "phase3", "--out", str(tmp_path / "p3")]) == 0
    for path in (out / "phase2" / "model", tmp_path / "p3"):
        model = AutoModelForSequenceClassification.from_pretrained(path)
        assert not any("parametrizations" in key or "coefficients" in key for key in model.state_dict())
        assert model.config.num_labels == 4 and model.config.id2label[0].startswith("safety:")


def test_tensorboard_has_importance_masks_and_drift(bert_run):
    out, _ = bert_run
    layer = "bert.encoder.layer.5.output.dense"
    phase2 = read_events(out / "phase2" / "runs")
    scalars = set(phase2.Tags()["scalars"])
    assert {f"train/importance/{layer}/{s}" for s in ("mean", "std", "max")} <= scalars
    assert f"train/masks/realised_ratio/{layer}" in scalars and "train/loss" in scalars
    assert f"importance/{layer}" in phase2.Tags()["histograms"]
    phase3 = read_events(out / "phase3" / "runs")
    frozen = phase3.Scalars(f"train/drift/{layer}/frozen")
    trainable = phase3.Scalars(f"train/drift/{layer}/trainable")
    assert frozen and all(e.value == 0.0 for e in frozen) and trainable[-1].value > 0


def test_verify_passes_and_eval_rescores(bert_run, capsys):
    out, rows = bert_run
    assert cli(["warp", "verify", "--run", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FAIL" not in printed and "frozen coefficients bit-identical" in printed and "checks passed" in printed
    assert "phase3_random: frozen coefficients bit-identical" in printed
    assert "phase3_eigenvalue: as many frozen as importance" in printed and "phase3_none: nothing frozen" in printed
    assert "phase 2: utility rows are the class-mean prototypes" in printed and "full_lr0.0001: head frozen" in printed
    rows = json.loads((out / "eval.json").read_text())
    assert cli(["warp", "eval", "--run", str(out)]) == 0
    assert "phase 3: WaRP masks" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text()) == rows


@pytest.mark.slow
def test_causal_lm_runs_all_phases_in_bf16(tmp_path):
    """bf16 weights: coefficients stay float32, verify passes (it failed 14 of 70 checks with bf16 coefficients)."""
    summary = run_recipe(
        "warp", *TINY_LLAMA[:1], f"output_dir={tmp_path}", *TINY_LLAMA[1:], "dtype=bfloat16", "save_full_models=true"
    )
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert list(rows) == ["phase2", "phase3", "plain"] == list(summary["arms"])
    assert all(0 <= v <= 1 for row in rows.values() for k, v in row.items() if k.endswith("accuracy"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "phase3" / "model")
    assert not any("parametrizations" in key for key in model.state_dict())
    assert model.dtype == torch.bfloat16
    assert cli(["warp", "verify", "--run", str(tmp_path)]) == 0


def test_tensorboard_has_spectrum_retention_curve_and_eval_table(bert_run):
    out, _ = bert_run
    layer = "bert.encoder.layer.5.output.dense"
    spectrum = read_events(out / "phase1" / "runs").Scalars(f"basis/{layer}/log10_eigenvalue")
    values = [e.value for e in sorted(spectrum, key=lambda e: e.step)]
    assert len(values) == 1536 and values == sorted(values, reverse=True)
    phase3 = set(read_events(out / "phase3" / "runs").Tags()["scalars"])
    assert {"eval/safety_accuracy", "eval/utility_accuracy"} <= phase3  # the retention curve during phase 3
    assert "eval/held_out/text_summary" in read_events(out / "eval" / "runs").Tags()["tensors"]


def test_verify_catches_an_arm_that_moved_the_frozen_head(bert_run, tmp_path, capsys):
    from warp_runs import copy_run

    from hf_ext.io import save_tensors

    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run, names=("config.json", "phase1", "phase2", "phase3", "plain"))
    assert cli(["warp", "verify", "--run", str(run)]) == 0
    assert "phase3: head frozen" in capsys.readouterr().out
    weights, metadata = load_tensors(run / "phase3" / "delta.safetensors")
    head = load_tensors(run / "phase2" / "delta.safetensors")[0]["classifier.weight"].clone()
    head[0, 0] += 0.01  # as if phase 3 had trained a safety row
    save_tensors(run / "phase3" / "delta.safetensors", weights | {"classifier.weight": head}, metadata)
    assert cli(["warp", "verify", "--run", str(run)]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "phase3: head frozen" in failed[0] and "moved" in failed[0]


@pytest.mark.slow
def test_importance_after_training_reports_its_overlap_with_the_during_training_masks(bert_run, tmp_path):
    from warp_runs import copy_run, run_phase

    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run, names=("config.json", "phase1"))
    run_phase(run, 2, "importance_pass=after_training")
    meta = json.loads((run / "phase2" / "metadata.json").read_text())
    assert meta["importance_pass"] == "after_training"
    masks, _ = load_tensors(run / "phase2" / "masks.safetensors")
    for name, overlap in meta["mask_overlap_with_during_training"].items():
        assert int(masks[name].sum()) == 154 and overlap["chance"] == pytest.approx(154 / 1536)
        assert 0 <= overlap["shared"] <= 1


def test_phase1_in_memory_groups_writes_the_same_basis(tmp_path):
    common = (*TINY_LLAMA[1:], "phase=1")
    run_recipe("warp", TINY_LLAMA[0], f"output_dir={tmp_path / 'one'}", *common)
    run_recipe("warp", TINY_LLAMA[0], f"output_dir={tmp_path / 'grouped'}", *common, "basis_memory_gb=0.0005")
    one, _ = load_tensors(tmp_path / "one" / "phase1" / "basis.safetensors")
    grouped, _ = load_tensors(tmp_path / "grouped" / "phase1" / "basis.safetensors")
    assert one.keys() == grouped.keys() and len(one) == 28
    for key in one:  # float32 statistics buffers: the same sums in the same order
        torch.testing.assert_close(grouped[key], one[key], rtol=0, atol=0)


@pytest.mark.slow
def test_deltas_applied_to_the_base_rebuild_the_merged_models(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "full"
    from warp_runs import copy_run, run_phase

    copy_run(out, run, names=("config.json", "phase1", "phase2"))
    run_phase(run, 3, "save_full_models=true", "mask_controls=[]")
    run_phase(run, "plain", "save_full_models=true", "plain_learning_rates=[0.001]", "full_learning_rates=[]")
    for phase in ("phase2", "phase3", "plain"):
        delta = run / phase / "delta.safetensors"
        full = run / phase / "model" / "model.safetensors"
        assert delta.stat().st_size < full.stat().st_size / 5
        assert cli(["warp", "apply-delta", "--run", str(run), "--phase", phase, "--out", str(tmp_path / phase)]) == 0
        rebuilt = AutoModelForSequenceClassification.from_pretrained(tmp_path / phase).state_dict()
        merged = AutoModelForSequenceClassification.from_pretrained(run / phase / "model").state_dict()
        assert rebuilt.keys() == merged.keys()
        assert all(torch.equal(rebuilt[k], merged[k]) for k in merged), phase
    from hf_ext.errors import FileFormatError
    from hf_ext.models import tiny_model
    from hf_ext.warp.delta import apply_delta

    with pytest.raises(FileFormatError, match="delta of another model"):
        apply_delta(tiny_model("bert", "seq_cls")[0], out / "phase3" / "delta.safetensors")
    assert cli(["warp", "apply-delta", "--run", str(out), "--phase", "phase4", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_shared_head_keeps_the_other_tasks_rows_and_verify_checks_them(tmp_path, capsys):
    from warp_runs import MINILM

    overrides = [o for o in MINILM[1:] if not o.startswith(("plain_learning_rates", "full_learning_rates"))]
    run_recipe(
        "warp", MINILM[0], f"output_dir={tmp_path}", *overrides, "head=shared", 'extra_trainable=["classifier"]',
        "head_seed=null", "mask_controls=[]", "plain_learning_rates=[0.001]", "full_learning_rates=[]",
    )  # fmt: skip
    assert not (tmp_path / "phase2" / "prototypes.safetensors").exists()
    assert f"(check it: hf-ext warp verify --run {tmp_path})" in capsys.readouterr().out  # the study's report
    assert cli(["warp", "verify", "--run", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "phase 2: utility rows of the head moved only by weight decay" in printed
    assert "phase3: safety rows of the head moved only by weight decay" in printed and "FAIL" not in printed
