"""recipes/warp.py end to end on tiny models, its run directory, TensorBoard, verify/eval, and bad input."""

import json
import shutil

import pytest
import torch
from recipes_util import run_recipe
from tb_events import read_events
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_ext.cli import main as cli
from hf_ext.config import ConfigError
from hf_ext.errors import RunDirectoryError
from hf_ext.io import file_sha256, load_tensors, save_tensors

# The embedded MiniLM: a random tiny BERT whose attention is frozen cannot learn these tasks in a few steps.
MINILM = (
    "warp_minilm.json",
    'targets=["layer.[4-5].output.dense"]',
    "max_train_samples=768",
    "max_eval_samples=128",
    "warmup_steps=0",
    "logging_steps=2",
    "eval_strategy=steps",
    "eval_steps=12",
)
TINY_LLAMA = (
    "warp_tiny_llama.json",
    "max_train_samples=256",
    "max_eval_samples=64",
    "logging_steps=2",
    "warmup_steps=0",
)
PHASE_FILES = [
    "config.json",
    "phase1/basis.safetensors",
    "phase1/metadata.json",
    "phase2/model/config.json",
    "phase2/importance.safetensors",
    "phase2/masks.safetensors",
    "phase2/metadata.json",
    "phase3/model/config.json",
    "phase3/coefficients.safetensors",
    "phase3/metadata.json",
    "plain/model/config.json",
    "eval.json",
    "eval.md",
]


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("warp_bert")
    rows = run_recipe("warp", *MINILM[:1], f"output_dir={out}", *MINILM[1:])
    return out, rows


def test_all_phases_write_the_documented_run_directory(bert_run):
    out, rows = bert_run
    for name in PHASE_FILES:
        assert (out / name).is_file(), name
    assert set(rows) == {"phase2", "phase3", "plain"}
    assert rows["phase2"]["safety_accuracy"] > 0.75  # the safety task was learned in phase 2
    assert rows["phase3"]["utility_accuracy"] > 0.75
    assert json.loads((out / "eval.json").read_text()) == rows


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
    assert meta["steps"] == 24 and meta["skipped_nonfinite_steps"] == 0 and meta["samples"] == 768
    phase3 = json.loads((out / "phase3" / "metadata.json").read_text())
    assert phase3["frozen_unchanged"] is True and set(phase3["frozen_max_deviation"].values()) == {0.0}


def test_merged_models_load_with_plain_transformers(bert_run):
    out, _ = bert_run
    for phase in ("phase2", "phase3", "plain"):
        model = AutoModelForSequenceClassification.from_pretrained(out / phase / "model")
        assert not any("parametrizations" in key for key in model.state_dict())
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
    assert cli(["warp", "eval", "--run", str(out)]) == 0
    assert "phase 3: WaRP masks" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text()) == rows


def test_verify_fails_when_a_frozen_coefficient_moved(bert_run, tmp_path, capsys):
    out, _ = bert_run
    coefficients, _ = load_tensors(out / "phase3" / "coefficients.safetensors")
    masks, _ = load_tensors(out / "phase2" / "masks.safetensors")
    name = "bert.encoder.layer.4.output.dense"
    column = int(masks[name].nonzero()[0])
    original = coefficients[name].clone()
    coefficients[name][0, column] += 1e-3
    try:
        save_tensors(out / "phase3" / "coefficients.safetensors", coefficients)
        assert cli(["warp", "verify", "--run", str(out)]) == 1
        assert "FAIL  phase 3: frozen coefficients bit-identical" in capsys.readouterr().out
    finally:
        coefficients[name] = original
        save_tensors(out / "phase3" / "coefficients.safetensors", coefficients)


def test_causal_lm_runs_all_phases(tmp_path):
    rows = run_recipe("warp", *TINY_LLAMA[:1], f"output_dir={tmp_path}", *TINY_LLAMA[1:])
    assert set(rows) == {"phase2", "phase3", "plain"}
    assert all(0 <= v <= 1 for row in rows.values() for k, v in row.items() if k.endswith("accuracy"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "phase3" / "model")
    assert not any("parametrizations" in key for key in model.state_dict())
    assert cli(["warp", "verify", "--run", str(tmp_path)]) == 0


def _phase(out, phase, *extra):
    return run_recipe("warp", *MINILM[:1], f"output_dir={out}", *MINILM[1:], f"phase={phase}", *extra)


def test_masks_of_wrong_shape_are_refused_before_phase3_writes(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    for name in ("config.json", "phase1", "phase2"):
        source = out / name
        target = run / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    masks, _ = load_tensors(run / "phase2" / "masks.safetensors")
    masks["bert.encoder.layer.4.output.dense"] = torch.ones(5, dtype=torch.bool)
    save_tensors(run / "phase2" / "masks.safetensors", masks)
    with pytest.raises(RunDirectoryError, match=r"phase2/masks.safetensors: recorded \w+, found \w+"):
        _phase(run, 3)  # the file is not the one phase 2 wrote
    metadata = json.loads((run / "phase2" / "metadata.json").read_text())
    metadata["lineage"]["masks"] = file_sha256(run / "phase2" / "masks.safetensors")
    (run / "phase2" / "metadata.json").write_text(json.dumps(metadata))  # as if phase 2 had written them
    with pytest.raises(ValueError, match=r"mask for 'bert.encoder.layer.4.output.dense' has shape \(5,\)"):
        _phase(run, 3)
    assert not (run / "phase3").exists()


def test_targets_changed_after_phase1_is_refused_before_phase2_writes(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    (run / "phase1").mkdir(parents=True)
    for name in ("basis.safetensors", "basis.json"):
        (run / "phase1" / name).write_bytes((out / "phase1" / name).read_bytes())
    with pytest.raises(RunDirectoryError, match="rerun phase 1"):
        _phase(run, 2, 'targets=["layer.[4-5].intermediate.dense"]')
    assert not (run / "phase2").exists()


def test_basis_for_a_module_that_does_not_exist_is_refused(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    tensors, _ = load_tensors(out / "phase1" / "basis.safetensors")
    renamed = {key.replace("layer.4.", "layer.7."): t for key, t in tensors.items()}
    save_tensors(run / "phase1" / "basis.safetensors", renamed)
    with pytest.raises(RunDirectoryError, match=r"covers \['bert.encoder.layer.7.output.dense'\] module\(s\) beyond"):
        _phase(run, 2)
    assert not (run / "phase2").exists()


@pytest.mark.parametrize("keep_ratio", ["0", "1", "1.5"])
def test_keep_ratio_outside_open_interval_is_a_config_error(tmp_path, keep_ratio):
    with pytest.raises(ConfigError, match=rf"keep_ratio={keep_ratio} is invalid; expected a number > 0 and < 1"):
        _phase(tmp_path, 2, f"keep_ratio={keep_ratio}")
    assert not any(tmp_path.iterdir())


def test_phase3_before_phase2_says_what_to_run(tmp_path):
    with pytest.raises(RunDirectoryError, match="run phase 2 first"):
        _phase(tmp_path, 3)


def _copy_run(out, run, names=("config.json", "phase1", "phase2")):
    for name in names:
        if (out / name).is_dir():
            shutil.copytree(out / name, run / name)
        else:
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / name, run / name)


def _rotate_basis(run):
    """Replace phase 1's basis by another valid one (same targets and shapes, orthonormal): another run's."""
    basis, metadata = load_tensors(run / "phase1" / "basis.safetensors")
    for key in [k for k in basis if k.endswith(".U")]:
        d = basis[key].shape[0]
        rotation = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0]
        basis[key] = basis[key] @ rotation
    save_tensors(run / "phase1" / "basis.safetensors", basis, metadata)


def test_basis_replaced_after_phase2_is_refused_by_phase3_and_leaves_the_record(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    _copy_run(out, run)
    _rotate_basis(run)
    config = (run / "config.json").read_bytes()
    with pytest.raises(RunDirectoryError, match=r"phase1/basis.safetensors: recorded \w+, found \w+"):
        _phase(run, 3)
    assert not (run / "phase3").exists() and (run / "config.json").read_bytes() == config


def test_failed_phase_does_not_rewrite_the_run_record(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    _copy_run(out, run)
    config = (run / "config.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="targets changed since phase 1"):
        _phase(run, 3, 'targets=["layer.[4-5].intermediate.dense"]')
    assert (run / "config.json").read_bytes() == config


def test_verify_fails_on_a_replaced_basis_and_on_missing_phases(bert_run, tmp_path, capsys):
    out, _ = bert_run
    run = tmp_path / "run"
    _copy_run(out, run, ("config.json", "phase1", "phase2", "phase3"))
    _rotate_basis(run)
    assert cli(["warp", "verify", "--run", str(run)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL  phase3 input is phase 2's file" in printed and "phase1/basis.safetensors: recorded" in printed
    only_phase1 = tmp_path / "only_phase1"
    _copy_run(out, only_phase1, ("config.json", "phase1"))
    assert cli(["warp", "verify", "--run", str(only_phase1)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL  phase 2 files present" in printed and "missing: phase2/model" in printed
    assert "FAIL  phase 3 files present" in printed


def test_tensorboard_has_spectrum_retention_curve_and_eval_table(bert_run):
    out, _ = bert_run
    layer = "bert.encoder.layer.5.output.dense"
    spectrum = read_events(out / "phase1" / "runs").Scalars(f"basis/{layer}/log10_eigenvalue")
    values = [e.value for e in sorted(spectrum, key=lambda e: e.step)]
    assert len(values) == 1536 and values == sorted(values, reverse=True)
    phase3 = set(read_events(out / "phase3" / "runs").Tags()["scalars"])
    assert {"eval/safety_accuracy", "eval/utility_accuracy"} <= phase3  # the retention curve during phase 3
    assert "eval/held_out/text_summary" in read_events(out / "eval" / "runs").Tags()["tensors"]
