"""The bad-input catalogue: inputs a researcher gets wrong, each a clear error (or a documented warning),
never a silent wrong result, and nothing half-written or overwritten."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipes_util import ROOT, run_recipe
from warp_runs import copy_run, rotate_basis, run_phase

from hf_ext.cli import main as cli
from hf_ext.config import DataArguments, HfExtTrainingArguments, ModelArguments, format_help, parse_config
from hf_ext.data import prepare_data
from hf_ext.errors import ConfigError, DataError, RunDirectoryError, exit_on_user_error
from hf_ext.io import file_sha256, load_tensors, save_tensors
from hf_ext.models import load_tokenizer
from hf_ext.warp.config import WarpArguments

TYPES = (ModelArguments, DataArguments, WarpArguments, HfExtTrainingArguments)


def _config(tmp_path, **values) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "report_to": [], **values}))
    return str(path)


def _parse(tmp_path, *overrides, **values):
    return parse_config(TYPES, [_config(tmp_path, **values), *overrides])


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


# ---- config values, checked before any model or data is loaded ----


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_train_samples=0", r"the command line: max_train_samples=0 is invalid; expected a number >= 1"),
        ("max_eval_samples=0", r"max_eval_samples=0 is invalid; expected a number >= 1"),
        ("learning_rate=-0.001", r"learning_rate=-0.001 is invalid; expected a number > 0"),
        ("per_device_train_batch_size=0", r"per_device_train_batch_size=0 is invalid; expected a number >= 1"),
        ("gradient_accumulation_steps=0", r"gradient_accumulation_steps=0 is invalid"),
        ("keep_ratio=1.5", r"keep_ratio=1.5 is invalid; expected a number > 0 and < 1"),
        ("safety_epochs=0", r"safety_epochs=0 is invalid; expected a number > 0"),
        ("dtype=float8", r"dtype=\"float8\" is invalid; expected one of 'float32', 'bfloat16', 'float16', 'auto'"),
        ("max_seq_length=0", r"max_seq_length=0 is invalid"),
        ("warmup_steps=-1", r"warmup_steps=-1 is invalid"),
        ("learning_rate=null", r"learning_rate=null is invalid; expected float"),
        ("lr_scheduler_type=cosinee", r"lr_scheduler_type=\"cosinee\" is invalid; expected one of 'linear', 'cosine'"),
        ("report_to=nothing", r"the command line: report_to=\['nothing'\]: nothing is not supported"),
        ("output_dir=null", r"output_dir is not set"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_command_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _parse(tmp_path, override)


def test_empty_config_file_and_list_element_types(tmp_path):
    from hf_ext.heads.config import HeadStudyArguments

    (tmp_path / "empty.json").write_text("\n")
    with pytest.raises(ConfigError, match="empty.json is empty: it must hold a JSON object"):
        parse_config(TYPES, [str(tmp_path / "empty.json")])
    types = (ModelArguments, DataArguments, HeadStudyArguments, HfExtTrainingArguments)
    with pytest.raises(ConfigError, match=r'seeds=\["a"\] is invalid; expected a list of int'):
        parse_config(types, [_config(tmp_path), 'seeds=["a"]'])


def test_a_bad_value_in_the_file_is_blamed_on_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config.json: max_train_samples=0 is invalid"):
        _parse(tmp_path, max_train_samples=0)


def test_unknown_keys_are_blamed_where_they_were_given(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) on the command line: 'learning_rat'") as err:
        _parse(tmp_path, "learning_rat=1")
    assert "config.json" not in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in .*config.json: 'zzz'"):
        _parse(tmp_path, zzz=1)


def test_zero_epochs_is_refused_instead_of_saving_an_untrained_model(tmp_path):
    with pytest.raises(ConfigError, match="num_train_epochs=0 with max_steps unset trains nothing"):
        _parse(tmp_path, "num_train_epochs=0")
    assert _parse(tmp_path, "num_train_epochs=0", "max_steps=3")[-1].max_steps == 3


@pytest.mark.parametrize("key", ["validation_file", "test_file"])
def test_local_validation_or_test_file_without_train_file_is_refused(tmp_path, key):
    with pytest.raises(ConfigError, match=f"{key} set but train_file is not"):
        _parse(tmp_path, f"{key}=v.jsonl")
    with pytest.raises(ConfigError, match=f"safety_{key} set but safety_train_file is not"):
        _parse(tmp_path, f"safety_{key}=v.jsonl")


def test_overwrite_output_dir_and_resume_true_parse(tmp_path):
    *_, training = _parse(tmp_path, "overwrite_output_dir=true", "resume_from_checkpoint=true")
    assert training.overwrite_output_dir is True and training.resume_from_checkpoint is True


def test_recipe_help_is_a_readable_key_list(capsys):
    text = format_help(TYPES)
    assert len(text.splitlines()) < 260
    assert "keep_ratio (float, a number > 0 and < 1, default 0.1)" in text
    assert "max_train_samples (int or null, a number >= 1, default None)" in text
    assert "overwrite_output_dir (bool, default False)" in text
    assert "--per_device_train_batch_size" not in text  # no argparse flags that would then be rejected


# ---- the one line a recipe prints ----


def test_recipe_prints_one_line_and_exits_2_on_a_user_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "warp.py"), _config(tmp_path), "keep_ratio=1.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "warp.py: error: the command line: keep_ratio=1.5 is invalid; expected a number > 0 and < 1 "
        "(WarpArguments.keep_ratio: Share of coefficients frozen in phase 3 (the most important), in (0, 1).)"
    ]


def test_exit_on_user_error_keeps_the_traceback_of_a_bug(capsys):
    def user_error():
        raise DataError("data file x.jsonl is empty")

    assert exit_on_user_error(user_error, "recipe") == 2
    assert capsys.readouterr().err == "recipe: error: data file x.jsonl is empty\n"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        exit_on_user_error(bug, "recipe")


# ---- data files, checked where they are read ----


def _data(tmp_path, train: str, validation: str | None = None, suffix=".jsonl", **args):
    (tmp_path / f"train{suffix}").write_text(train)
    files = {"train_file": str(tmp_path / f"train{suffix}")}
    if validation is not None:
        (tmp_path / f"validation{suffix}").write_text(validation)
        files["validation_file"] = str(tmp_path / f"validation{suffix}")
    return prepare_data(DataArguments(**files, **args), load_tokenizer("tiny:bert"), "seq_cls")


def _rows(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


GOOD = _rows(
    *[{"text": f"a fine film {i}", "label": "pos"} for i in range(4)],
    *[{"text": f"a dull film {i}", "label": "neg"} for i in range(4)],
)


def test_empty_data_file(tmp_path):
    with pytest.raises(DataError, match=r"train.jsonl is empty: it holds no examples"):
        _data(tmp_path, "\n\n")


def test_unparseable_line_is_named_by_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"train.jsonl:3: not valid JSON"):
        _data(tmp_path, _rows({"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}) + '{"text": "c", label}\n')


def test_null_label(tmp_path):
    with pytest.raises(DataError, match=r"train split: row 5 has no 'label' \(null\)"):
        _data(tmp_path, GOOD.replace('"label": "neg"', '"label": null', 1), GOOD)


def test_label_types_mixed_across_rows(tmp_path):
    mixed = _rows({"text": "a", "label": 1}, {"text": "b", "label": "pos"})
    with pytest.raises(DataError, match=r"column 'label' holds number on line 1 but text on line 2"):
        _data(tmp_path, mixed)


def test_label_only_in_validation_is_not_a_new_class(tmp_path):
    validation = GOOD + _rows({"text": "a so-so film", "label": "meh"})
    with pytest.raises(
        DataError, match=r"label\(s\) \['meh'\] appear in the validation split \(1 row\(s\)\) but never"
    ):
        _data(tmp_path, GOOD, validation)


def test_text_column_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"seq_cls reads text_column='sentence', not in the train split"):
        _data(tmp_path, GOOD, GOOD, text_column="sentence")


def test_csv_row_with_the_wrong_number_of_fields(tmp_path):
    with pytest.raises(DataError, match=r"train.csv:3: 3 fields, but the header has 2"):
        _data(tmp_path, "text,label\na film,pos\na film, sadly,neg\n", suffix=".csv")


def test_max_seq_length_beyond_the_model_is_lowered_with_a_warning(tmp_path, caplog):
    tokenizer = load_tokenizer("tiny:bert")
    with caplog.at_level(logging.WARNING):
        data = prepare_data(
            DataArguments(max_seq_length=100_000, max_train_samples=4, max_eval_samples=4), tokenizer, "seq_cls"
        )
    assert f"more than the model takes ({tokenizer.model_max_length})" in caplog.text
    assert max(len(ids) for ids in data.train["input_ids"]) <= tokenizer.model_max_length


def test_unknown_model_name_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot load model 'no-such-org/no-such-model'.*check model_name_or_path"):
        load_tokenizer("no-such-org/no-such-model")
    with pytest.raises(ConfigError, match=r"holds no config.json: it is not a saved model"):
        load_tokenizer(str(tmp_path))


# ---- output directories ----


def _finetune(tmp_path, out, *overrides):
    return run_recipe(
        "finetune",
        "finetune_minilm_sentiment.json",
        f"output_dir={out}",
        "model_name_or_path=tiny:bert",
        "max_train_samples=16",
        "max_eval_samples=8",
        "max_steps=1",
        "warmup_steps=0",
        "report_to=[]",
        *overrides,
    )


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        _finetune(tmp_path, tmp_path / "out")


def test_output_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="cannot be written"):
        _finetune(tmp_path, tmp_path / "file" / "out")


def test_finished_run_is_not_replaced_without_overwrite_output_dir(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out)
    before = _hashes(out)
    with pytest.raises(RunDirectoryError, match=r"already holds a finished run .*set overwrite_output_dir=true"):
        _finetune(tmp_path, out)
    assert _hashes(out) == before
    _finetune(tmp_path, out, "overwrite_output_dir=true")


def test_resume_true_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(RunDirectoryError, match="resume_from_checkpoint=true but .* holds no checkpoint-<step>"):
        _finetune(tmp_path, tmp_path / "out", "resume_from_checkpoint=true")


def test_resume_true_means_the_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out, "max_steps=2", "save_strategy=steps", "save_steps=1")
    trainer = _finetune(
        tmp_path, out, "max_steps=3", "save_strategy=steps", "save_steps=1", "resume_from_checkpoint=true"
    )
    assert trainer.state.global_step == 3


def test_warmup_covering_every_step_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"warmup_steps=10 covers all 1 optimizer step\(s\) of this run"):
        _finetune(tmp_path, tmp_path / "out", "warmup_steps=10")


# ---- WaRP run directories: files that do not belong together ----


def test_masks_of_wrong_shape_are_refused_before_phase3_writes(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    masks, _ = load_tensors(run / "phase2" / "masks.safetensors")
    masks["bert.encoder.layer.4.output.dense"] = torch.ones(5, dtype=torch.bool)
    save_tensors(run / "phase2" / "masks.safetensors", masks)
    with pytest.raises(RunDirectoryError, match=r"phase2/masks.safetensors: recorded \w+, found \w+"):
        run_phase(run, 3)  # the file is not the one phase 2 wrote
    metadata = json.loads((run / "phase2" / "metadata.json").read_text())
    metadata["lineage"]["masks"] = file_sha256(run / "phase2" / "masks.safetensors")
    (run / "phase2" / "metadata.json").write_text(json.dumps(metadata))  # as if phase 2 had written them
    with pytest.raises(ValueError, match=r"mask for 'bert.encoder.layer.4.output.dense' has shape \(5,\)"):
        run_phase(run, 3)
    assert not (run / "phase3").exists()


def test_targets_changed_after_phase1_is_refused_before_phase2_writes(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    (run / "phase1").mkdir(parents=True)
    for name in ("basis.safetensors", "basis.json"):
        (run / "phase1" / name).write_bytes((out / "phase1" / name).read_bytes())
    with pytest.raises(RunDirectoryError, match="rerun phase 1"):
        run_phase(run, 2, 'targets=["layer.[4-5].intermediate.dense"]')
    assert not (run / "phase2").exists()


def test_basis_for_a_module_that_does_not_exist_is_refused(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    tensors, _ = load_tensors(out / "phase1" / "basis.safetensors")
    renamed = {key.replace("layer.4.", "layer.7."): t for key, t in tensors.items()}
    save_tensors(run / "phase1" / "basis.safetensors", renamed)
    with pytest.raises(
        RunDirectoryError,
        match=r"the basis holds \['bert.encoder.layer.7.output.dense'\], which are no longer targets; it has no",
    ):
        run_phase(run, 2)
    assert not (run / "phase2").exists()


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
    config = (run / "config.json").read_bytes()
    with pytest.raises(RunDirectoryError, match=r"phase1/basis.safetensors: recorded \w+, found \w+"):
        run_phase(run, 3)
    assert not (run / "phase3").exists() and (run / "config.json").read_bytes() == config


def test_failed_phase_does_not_rewrite_the_run_record(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    config = (run / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="phase2 ran with other arguments: targets="):
        run_phase(run, 3, 'targets=["layer.[4-5].intermediate.dense"]')
    assert (run / "config.json").read_bytes() == config


def test_verify_fails_on_a_replaced_basis_and_on_missing_phases(bert_run, tmp_path, capsys):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run, ("config.json", "phase1", "phase2", "phase3"))
    rotate_basis(run)
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
        assert cli(["warp", "verify", "--run", str(out)]) == 1
        assert "FAIL  phase3: frozen coefficients bit-identical" in capsys.readouterr().out
    finally:
        coefficients[name] = original
        save_tensors(out / "phase3" / "coefficients.safetensors", coefficients)


# ---- names that resolve to nothing, and follow-ups of the first new-user trial ----


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_tokenizer("tiny:gpt9"), "unknown tiny model 'tiny:gpt9'; choose one of tiny:llama"),
        (lambda: load_tokenizer("/no/such/model"), "model directory /no/such/model does not exist"),
        (
            lambda: prepare_data(DataArguments(dataset_name="builtin:nope"), load_tokenizer("tiny:bert"), "seq_cls"),
            "unknown built-in task 'nope'; choose one of safety, sentiment, topic",
        ),
    ],
    ids=["tiny", "path", "builtin"],
)
def test_names_that_resolve_to_nothing_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_an_encoder_is_refused_for_causal_lm():
    from hf_ext.models import load_model

    with pytest.raises(ConfigError, match=r"tiny:bert is an encoder \(bert\); task_type causal_lm needs a decoder"):
        load_model(ModelArguments(model_name_or_path="tiny:bert", task_type="causal_lm"), load_tokenizer("tiny:bert"))


def test_target_patterns_that_match_nothing_are_config_errors():
    from hf_ext.models import tiny_model
    from hf_ext.targets import select_linear

    model, _ = tiny_model("bert", "seq_cls")
    with pytest.raises(ConfigError, match="target pattern 'foo.bar' matches no nn.Linear"):
        select_linear(model, "foo.bar")
    with pytest.raises(ConfigError, match="invalid regular expression in target pattern 're:\\[abc'"):
        select_linear(model, "re:[abc")


def test_files_with_different_columns(tmp_path):
    validation = _rows({"sentence": "a fine film", "label": "pos"}, {"sentence": "a dull film", "label": "neg"})
    with pytest.raises(DataError, match=r"validation.jsonl has columns \['sentence', 'label'\] but .*train.jsonl has"):
        _data(tmp_path, GOOD, validation)


def test_a_failed_run_leaves_no_empty_output_dir(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError):
        _finetune(tmp_path, tmp_path / "out", "dataset_name=null", f"train_file={tmp_path / 'train.jsonl'}")
    assert not (tmp_path / "out").exists()


def test_resume_from_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "not_a_checkpoint").mkdir()
    with pytest.raises(RunDirectoryError, match=r"is not a checkpoint \(no trainer_state.json\)"):
        _finetune(tmp_path, tmp_path / "out", f"resume_from_checkpoint={tmp_path / 'not_a_checkpoint'}")


def test_resuming_a_run_with_nothing_left_to_train_keeps_its_results(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out, "max_steps=2", "save_strategy=steps", "save_steps=1")
    before = _hashes(out)
    with pytest.raises(
        RunDirectoryError, match=r"checkpoint-2 is at step 2 and this run has 2 steps: nothing is left"
    ):
        _finetune(tmp_path, out, "max_steps=2", "save_strategy=steps", "save_steps=1", "resume_from_checkpoint=true")
    assert _hashes(out) == before


def _head_run(tmp_path) -> Path:
    from hf_ext.heads.analysis import write_jsonl

    values = [[1.0, 2.0], [3.0, 4.0]]
    for name, fields in {
        "I_pre": ("loss_increase",),
        "I_post": ("loss_increase",),
        "G_pre": ("gradient", "fisher"),
        "U": ("U", "Urel"),
    }.items():
        write_jsonl(tmp_path / f"{name}.jsonl", {f: values for f in fields})
    return tmp_path


@pytest.mark.parametrize(
    "options, message",
    [
        (["--important", "150"], "important percentile 150 is outside 0..100"),
        (["--static", "-5"], "static percentile -5 is outside 0..100"),
        (["--important", "10"], "important percentile 10 is below unimportant percentile 30"),
        (["--top-k", "1000"], "top_k=1000 but there are 4 heads; choose top_k between 1 and 4"),
    ],
)
def test_heads_aggregate_options_out_of_range(tmp_path, capsys, options, message):
    run = _head_run(tmp_path)
    assert cli(["heads", "aggregate", "--run", str(run), "--top-k", "2", *options]) == 2
    assert message in capsys.readouterr().err
    assert not (run / "stats.json").exists() and not (run / "heads.csv").exists()


def test_heads_aggregate_uses_the_runs_own_top_k_by_default(tmp_path, capsys):
    run = _head_run(tmp_path)
    assert cli(["heads", "aggregate", "--run", str(run), "--top-k", "3"]) == 0
    assert cli(["heads", "aggregate", "--run", str(run)]) == 0  # 4 heads: the default 20 would be refused
    assert json.loads((run / "stats.json").read_text())["top_k"] == 3


def test_heads_analysis_names_a_truncated_line_and_a_wrong_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    run = _head_run(tmp_path / "run")
    with open(run / "I_pre.jsonl", "a") as f:
        f.write('{"layer": 0, "head": 0, "value": ')
    assert cli(["heads", "aggregate", "--run", str(run)]) == 2
    assert "I_pre.jsonl:5: not valid JSON" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["heads", "plot", "--run", str(tmp_path / "empty")]) == 2
    assert "holds neither seed-* directories nor I_pre.jsonl" in capsys.readouterr().err


def test_data_export_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli(["data", "export", "sentiment", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; name a directory" in capsys.readouterr().err


def test_eval_subset_larger_than_the_data_says_so(tmp_path, caplog):
    from datasets import Dataset

    from hf_ext.data import eval_subset

    with caplog.at_level(logging.WARNING):
        indices = eval_subset(Dataset.from_dict({"x": list(range(5))}), 100, 0, tmp_path / "subset.json")
    assert len(indices) == 5 and "eval_subset_size=100 is more than the 5 validation examples" in caplog.text


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
    assert cli(["warp", "verify", "--run", str(run)]) == 1
    assert "FAIL  phase 2 trained in this basis" in capsys.readouterr().out


# ---- follow-ups of the second new-user trial ----


def test_a_key_given_twice_in_the_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"output_dir": "out", "learning_rate": 5e-5, "learning_rate": 0.5}')
    with pytest.raises(ConfigError, match=r"gives key\(s\) \['learning_rate'\] more than once"):
        parse_config(TYPES, [str(path)])


def test_csv_header_naming_a_column_twice(tmp_path):
    with pytest.raises(DataError, match=r"names column\(s\) \['text'\] more than once"):
        _data(tmp_path, "text,label,text\na,pos,b\n", suffix=".csv")


@pytest.mark.parametrize(
    "train, message",
    [
        (_rows({"text": "a", "label": ["pos"]}, {"text": "b", "label": ["neg"]}), "holds List values"),
        (_rows({"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}), "hold 1 class"),
        (_rows({"text": {"a": 1}, "label": "pos"}, {"text": {"a": 2}, "label": "neg"}), "expected text"),
        (_rows({"text": "", "label": "pos"}, {"text": " ", "label": "neg"}), "is empty: there is no text"),
    ],
    ids=["label-lists", "one-class", "text-not-text", "empty-texts"],
)
def test_labels_and_texts_a_classifier_cannot_use(tmp_path, train, message):
    with pytest.raises(DataError, match=message):
        _data(tmp_path, train, train)


def test_max_seq_length_too_small_for_the_special_tokens():
    with pytest.raises(ConfigError, match="max_seq_length=2 leaves no room for text"):
        prepare_data(DataArguments(max_seq_length=2), load_tokenizer("tiny:bert"), "seq_cls")


def test_layers_that_do_not_exist():
    from hf_ext.models import tiny_model
    from hf_ext.targets import select_linear

    with pytest.raises(
        ConfigError, match=r"layers \[2, 3\] do not exist: BertForSequenceClassification has blocks 0-1"
    ):
        select_linear(tiny_model("bert", "seq_cls")[0], "output.dense", layers="1-3")


def test_heads_aggregate_top_k_zero_is_refused(tmp_path, capsys):
    assert cli(["heads", "aggregate", "--run", str(_head_run(tmp_path)), "--top-k", "0"]) == 2
    assert "top_k=0 but there are 4 heads" in capsys.readouterr().err


def test_warp_commands_on_a_directory_that_is_not_a_warp_run(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    for command in ("verify", "eval"):
        assert cli(["warp", command, "--run", str(tmp_path)]) == 2
        assert "is not the record of a WaRP run" in capsys.readouterr().err


def test_resume_from_a_checkpoint_of_another_model(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out, "max_steps=1", "save_strategy=steps", "save_steps=1")
    with pytest.raises(RunDirectoryError, match=r"was written by another model \(model_type bert vs llama"):
        _finetune(
            tmp_path,
            tmp_path / "other",
            "model_name_or_path=tiny:llama",
            "max_steps=2",
            f"resume_from_checkpoint={out / 'checkpoint-1'}",
        )


def test_later_phases_refuse_arguments_that_change_earlier_results(bert_run, tmp_path):
    out, _ = bert_run
    run = tmp_path / "run"
    copy_run(out, run)
    with pytest.raises(ConfigError, match=r"phase2 ran with other arguments: keep_ratio=0.5 \(it used 0.1\)"):
        run_phase(run, 3, "keep_ratio=0.5")
    with pytest.raises(ConfigError, match=r"phase1 ran with other arguments: safety_dataset_name='builtin:topic'"):
        run_phase(run, 2, "safety_dataset_name=builtin:topic", "overwrite_output_dir=true")
    assert not (run / "phase3").exists() and (run / "phase2" / "metadata.json").exists()
