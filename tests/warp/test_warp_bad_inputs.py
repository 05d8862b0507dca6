"""The bad-input catalogue (see tests/shared/test_bad_inputs.py), WaRP: run directories whose files do not belong
together, tampered bases, arguments that change earlier phases, non-finite importance and bases."""

import json

import pytest
import torch
from bad_inputs_util import TAMPERING, TAMPERING_IDS, unchanged
from warp_runs import copy_run, rotate_basis, run_phase, seed_copies

from hf_ext.cli import main as cli
from hf_ext.errors import ConfigError, FileFormatError, RunDirectoryError
from hf_ext.io import file_sha256, load_tensors, save_tensors


def test_masks_of_wrong_shape_are_refused_before_phase3_writes(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    masks, _ = load_tensors(run / "phase2" / "masks.safetensors")
    masks["bert.encoder.layer.4.output.dense"] = torch.ones(5, dtype=torch.bool)
    save_tensors(run / "phase2" / "masks.safetensors", masks)
    with (
        unchanged(run),
        pytest.raises(RunDirectoryError, match=r"phase2/masks.safetensors: recorded \w+, found \w+"),
    ):
        run_phase(run, 3)  # the file is not the one phase 2 wrote
    metadata = json.loads((run / "phase2" / "metadata.json").read_text())
    metadata["lineage"]["masks"] = file_sha256(run / "phase2" / "masks.safetensors")
    (run / "phase2" / "metadata.json").write_text(json.dumps(metadata))  # as if phase 2 had written them
    with (
        unchanged(run),
        pytest.raises(ValueError, match=r"mask for 'bert.encoder.layer.4.output.dense' has shape \(5,\)"),
    ):
        run_phase(run, 3)


def test_targets_changed_after_phase1_is_refused_before_phase2_writes(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    (run / "phase1").mkdir(parents=True)
    for name in ("basis.safetensors", "basis.json"):
        (run / "phase1" / name).write_bytes((out / "phase1" / name).read_bytes())
    with unchanged(run), pytest.raises(RunDirectoryError, match="rerun phase 1"):
        run_phase(run, 2, 'targets=["layer.[4-5].intermediate.dense"]')


def test_basis_for_a_module_that_does_not_exist_is_refused(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    tensors, _ = load_tensors(out / "phase1" / "basis.safetensors")
    renamed = {key.replace("layer.4.", "layer.7."): t for key, t in tensors.items()}
    save_tensors(run / "phase1" / "basis.safetensors", renamed)
    with (
        unchanged(run),
        pytest.raises(
            RunDirectoryError,
            match=r"the basis holds \['bert.encoder.layer.7.output.dense'\], which are no longer targets; it has no",
        ),
    ):
        run_phase(run, 2)


@pytest.mark.parametrize("keep_ratio", ["0", "1", "1.5"])
def test_keep_ratio_outside_open_interval_is_a_config_error(tmp_path, keep_ratio):
    with pytest.raises(ConfigError, match=rf"keep_ratio={keep_ratio} is invalid; expected a number > 0 and < 1"):
        run_phase(tmp_path, 2, f"keep_ratio={keep_ratio}")
    assert not any(tmp_path.iterdir())


def test_phase3_before_phase2_says_what_to_run(tmp_path):
    with pytest.raises(RunDirectoryError, match="run phases 1 and 2 first"):
        run_phase(tmp_path, 3)


def test_basis_replaced_after_phase2_is_refused_by_phase3_and_leaves_the_record(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    rotate_basis(run)
    with unchanged(run), pytest.raises(RunDirectoryError, match=r"phase1/basis.safetensors: recorded \w+, found \w+"):
        run_phase(run, 3)


def test_failed_phase_does_not_rewrite_the_run_record(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    with unchanged(run), pytest.raises(ConfigError, match="phase2 ran with other arguments: targets="):
        run_phase(run, 3, 'targets=["layer.[4-5].intermediate.dense"]')


def test_verify_fails_on_a_replaced_basis_and_on_missing_phases(bert_run, tmp_path, capsys):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run, ("config.json", "phase1", "phase2", "phase3"))
    rotate_basis(run)
    with unchanged(run):
        assert cli(["warp", "verify", "--run", str(run)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL  phase3 input is phase 2's file" in printed and "phase1/basis.safetensors: recorded" in printed
    only_phase1 = tmp_path / "only_phase1"
    copy_run(out, only_phase1, ("config.json", "phase1"))
    assert cli(["warp", "verify", "--run", str(only_phase1)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL  phase 2 files present" in printed and "missing: phase2/model" in printed
    assert "FAIL  phase 3 files present" in printed


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
        with unchanged(out):
            assert cli(["warp", "verify", "--run", str(out)]) == 1
        assert "FAIL  phase3: frozen coefficients bit-identical" in capsys.readouterr().out
    finally:
        coefficients[name] = original
        save_tensors(out / "phase3" / "coefficients.safetensors", coefficients)


def test_rerunning_phase1_with_overwrite_removes_the_phases_computed_from_it(bert_run, tmp_path, capsys):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    with pytest.raises(RunDirectoryError, match="already holds a finished run"):
        run_phase(run, 1)
    assert (run / "phase2" / "metadata.json").exists()
    run_phase(run, 1, "overwrite_output_dir=true")
    assert "rerunning phase1: removing results computed from it: phase2" in capsys.readouterr().out
    assert not (run / "phase2").exists() and (run / "phase1" / "basis.safetensors").exists()


def test_verify_fails_when_the_basis_is_not_phase2s_even_without_phase3(bert_run, tmp_path, capsys):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    rotate_basis(run)
    with unchanged(run):
        assert cli(["warp", "verify", "--run", str(run)]) == 1
    assert "FAIL  phase 2 trained in this basis" in capsys.readouterr().out


def test_warp_commands_on_a_directory_that_is_not_a_warp_run(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    for command in ("verify", "eval"):
        with unchanged(tmp_path):
            assert cli(["warp", command, "--run", str(tmp_path)]) == 2
        assert "is not the record of a WaRP run" in capsys.readouterr().err


def test_later_phases_refuse_arguments_that_change_earlier_results(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    with unchanged(run):
        with pytest.raises(ConfigError, match=r"phase2 ran with other arguments: keep_ratio=0.5 \(it used 0.1\)"):
            run_phase(run, 3, "keep_ratio=0.5")
        with pytest.raises(ConfigError, match=r"phase1 ran with other arguments: safety_dataset_name='builtin:topic'"):
            run_phase(
                run, 2, "safety_dataset_name=builtin:topic", "ood_dataset_name=null", "overwrite_output_dir=true"
            )


@pytest.mark.parametrize("tamper, message", TAMPERING, ids=TAMPERING_IDS)
def test_tampered_basis_is_refused_by_phase2_before_it_writes(bert_run, tmp_path, tamper, message):
    """The real consumer: WaRP phase 2 reads phase 1's basis."""
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run, ("config.json", "phase1"))
    tamper(run / "phase1" / "basis.safetensors")
    with unchanged(run), pytest.raises(FileFormatError, match=r"phase1/basis.safetensors " + message):
        run_phase(run, 2)


def test_a_basis_of_another_model_is_refused_by_phase2(bert_run, tmp_path):
    """A complete basis pair (file and its own sidecar) for the same module names but another model's width."""
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run, ("config.json", "phase1"))
    basis, metadata = load_tensors(run / "phase1" / "basis.safetensors")
    narrow = {name: torch.eye(64) if name.endswith(".U") else torch.ones(64) for name in basis}
    save_tensors(run / "phase1" / "basis.safetensors", narrow, metadata | {"model": "tiny:bert"})
    with unchanged(run), pytest.raises(ValueError, match=r"basis for 'bert.encoder.layer.4.output.dense' has shape"):
        run_phase(run, 2)


def test_an_infinite_gradient_in_warp_importance_is_skipped_with_a_warning_and_counted():
    from hf_ext.warp.importance import ImportanceAccumulator

    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(4, 3)).sum().backward()
    accumulator = ImportanceAccumulator({"w": layer.weight}, statistic="step")
    accumulator.update()
    layer.weight.grad[0, 0] = float("inf")
    with pytest.warns(UserWarning, match="non-finite gradient at importance step 2: step skipped"):
        assert accumulator.update() is False
    assert (accumulator.steps, accumulator.skipped_steps) == (1, 1)
    assert torch.isfinite(accumulator.mean()["w"]).all()


def test_a_basis_holding_nan_is_refused():
    from hf_ext.warp.reparam import reparameterize

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    basis = torch.eye(4)
    basis[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="basis for '0' holds NaN or infinite values; recompute it"):
        reparameterize(model, {"0": basis})


def test_an_outside_safety_set_with_other_classes_is_refused(tmp_path):
    with pytest.raises(
        ConfigError, match=r"ood_dataset_name 'builtin:sentiment' has classes \['negative', 'positive'\]"
    ):
        run_phase(tmp_path, 1, "ood_dataset_name=builtin:sentiment")
    assert not (tmp_path / "config.json").exists()


def test_summary_needs_the_seeds_of_a_finished_study(bert_run, tmp_path, capsys):
    out, _ = bert_run
    assert cli(["warp", "summary", "--run", str(out)]) == 2
    assert "holds no seed-* directories: the summary is over the seeds of a study" in capsys.readouterr().err
    assert cli(["warp", "summary", "--run", str(tmp_path / "missing")]) == 2
    assert "missing is not a directory: pass the study's output_dir" in capsys.readouterr().err
    study = tmp_path / "study"
    copy_run(out, study / "seed-42", names=("config.json", "eval.json"))
    copy_run(out, study / "seed-43", names=("config.json",))
    assert cli(["warp", "summary", "--run", str(study)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "seed-43/eval.json not found: finish that seed (phase eval) first" in error
    assert not (study / "eval.json").exists()


def _edit_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


SEED_MIXUPS = {
    "eval.json of another tool": (
        lambda study: (study / "seed-43" / "eval.json").write_text("{}"),
        "seed-43/eval.json holds no phase-2 scores: not written by hf-ext warp eval",
    ),
    "a seed copied twice": (
        lambda study: _edit_json(study / "seed-43" / "config.json", lambda c: c | {"seed": 42}),
        "seed-43 and {study}/seed-42 both ran seed 42",
    ),
    "an arm not scored in one seed": (
        lambda study: _edit_json(
            study / "seed-43" / "eval.json", lambda r: {k: v for k, v in r.items() if k != "plain"}
        ),
        "seed-43/eval.json and {study}/seed-42/eval.json score different arms (plain)",
    ),
    "an arm of another config": (
        lambda study: _edit_json(study / "seed-43" / "eval.json", lambda r: r | {"phase3_k0.9": r["phase3"]}),
        "seed-43/eval.json scores arms its config does not run (phase3_k0.9): it comes from another run",
    ),
}


@pytest.mark.parametrize("mixup", SEED_MIXUPS)
def test_summary_refuses_seeds_that_are_not_one_study(bert_run, tmp_path, capsys, mixup):
    out, _ = bert_run
    study = tmp_path / "study"
    seed_copies(out, study)
    assert {"phase2", "phase3", "plain"} <= set(json.loads((study / "seed-42" / "eval.json").read_text()))
    spoil, message = SEED_MIXUPS[mixup]
    spoil(study)
    assert cli(["warp", "summary", "--run", str(study)]) == 2
    error = capsys.readouterr().err  # the arms are known once the run is loaded: its progress bars come first
    assert error.count("error:") == 1 and message.format(study=study) in error.splitlines()[-1]
    assert not (study / "eval.json").exists()
