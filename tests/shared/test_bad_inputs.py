"""The bad-input catalogue: inputs a researcher gets wrong, each a clear error (or a documented warning),
never a silent wrong result, and nothing half-written or overwritten.

The technique-specific entries are in tests/<technique>/test_*_bad_inputs.py; their shared helpers in
tests/bad_inputs_util.py."""

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_inputs_util import TAMPERING, TAMPERING_IDS, unchanged
from recipes_util import ROOT, run_recipe

from hf_ext.cli import main as cli
from hf_ext.config import DataArguments, HfExtTrainingArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.entrypoint import exit_on_user_error
from hf_ext.errors import ConfigError, DataError, FileFormatError, RunDirectoryError, TrainingDivergedError, WriteError
from hf_ext.io import load_tensors, save_tensors, sidecar_path, write_json
from hf_ext.models import load_tokenizer
from hf_ext.parsing import format_help, parse_config
from hf_ext.warp.config import WarpArguments

TYPES = (ModelArguments, DataArguments, WarpArguments, HfExtTrainingArguments)


def _config(tmp_path, **values) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "report_to": [], **values}))
    return str(path)


def _parse(tmp_path, *overrides, **values):
    return parse_config(TYPES, [_config(tmp_path, **values), *overrides])


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


@pytest.mark.parametrize(
    "override, message",
    [
        ("per_device_train_batch_size=2.5", r"per_device_train_batch_size=2.5 is invalid; expected int \("),
        ("overwrite_output_dir=yes", r"overwrite_output_dir=\"yes\" is invalid; expected bool \("),
        ('targets="layer.4"', r"targets=\"layer.4\" is invalid; expected a list of str \("),
        ("max_train_samples=ten", r"max_train_samples=\"ten\" is invalid; expected int or null \("),
        ("seed=1e3", r"seed=1000.0 is invalid; expected int \("),
    ],
    ids=["float-for-int", "text-for-bool", "text-for-list", "text-for-int", "exponent-for-int"],
)
def test_values_of_the_wrong_type(tmp_path, override, message):
    with pytest.raises(ConfigError, match=r"the command line: " + message):
        _parse(tmp_path, override)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "learning_rate=NaN",
            r"learning_rate=NaN is invalid; expected a finite number \(JSON has no NaN or Infinity\)",
        ),
        ("num_train_epochs=Infinity", r"num_train_epochs=Infinity is invalid; expected a finite number"),
        (
            "plain_learning_rates=[0.001,NaN]",
            r"plain_learning_rates=\[0.001, NaN\] is invalid; expected finite numbers",
        ),
    ],
    ids=["nan", "infinity", "nan-in-a-list"],
)
def test_non_finite_numbers_are_refused(tmp_path, override, message):
    """Python's json reads NaN and Infinity, and no range check refuses them (NaN > 0 is false, so is NaN <= 0)."""
    with pytest.raises(ConfigError, match=message):
        _parse(tmp_path, override)


def test_config_file_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nothere.json not found"):
        parse_config(TYPES, [str(tmp_path / "nothere.json")])


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
    with pytest.raises(ConfigError, match=r"config.json: learning_rate=NaN is invalid; expected a finite number"):
        _parse(tmp_path, learning_rate=float("nan"))  # json.dumps writes NaN, which json.loads reads back


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
    assert len(text.splitlines()) < 290  # about 70 keys, one to four lines each
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


def _data(tmp_path, train: str, validation: str | None = None, suffix=".jsonl", task_type="seq_cls", **args):
    """``prepare_data`` on these files (tiny:bert, or tiny:llama for causal_lm), which it must leave as they are."""
    (tmp_path / f"train{suffix}").write_text(train)
    files = {"train_file": str(tmp_path / f"train{suffix}")}
    if validation is not None:
        (tmp_path / f"validation{suffix}").write_text(validation)
        files["validation_file"] = str(tmp_path / f"validation{suffix}")
    tokenizer = load_tokenizer("tiny:llama" if task_type == "causal_lm" else "tiny:bert")
    with unchanged(tmp_path):
        return prepare_data(DataArguments(**files, **args), tokenizer, task_type)


def _rows(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


GOOD = _rows(
    *[{"text": f"a fine film {i}", "label": "pos"} for i in range(4)],
    *[{"text": f"a dull film {i}", "label": "neg"} for i in range(4)],
)


@pytest.mark.parametrize(
    "text, suffix, message",
    [
        ("\n\n", ".jsonl", r"train.jsonl is empty: it holds no examples"),
        ("[]", ".json", r"train.json holds no examples"),
        ("text,label\n", ".csv", r"train.csv holds no examples"),
    ],
    ids=["blank-jsonl", "empty-json-array", "csv-header-only"],
)
def test_data_file_with_zero_rows(tmp_path, text, suffix, message):
    with pytest.raises(DataError, match=message):
        _data(tmp_path, text, suffix=suffix)


def test_a_split_whose_every_example_is_filtered_out(tmp_path):
    """causal_lm drops examples whose response is truncated away; when that is all of them, say so (it trained
    on nothing before)."""
    rows = _rows(*[{"prompt": "a fine film " * 20, "response": "good"} for _ in range(4)])
    with pytest.raises(
        DataError, match=r"every one of the 4 examples of the train split was dropped: each prompt fills max_seq_len"
    ):
        _data(tmp_path, rows, rows, task_type="causal_lm", max_seq_length=8)


def test_examples_whose_response_does_not_fit_are_dropped_with_a_warning(tmp_path, caplog):
    long = [{"prompt": "a fine film " * 20, "response": "good"}]
    short = [{"prompt": "a fine film", "response": "good"}] * 3
    with caplog.at_level(logging.WARNING):
        data = _data(tmp_path, _rows(*long, *short), _rows(*short), task_type="causal_lm", max_seq_length=16)
    assert len(data.train) == 3 and "train: dropped 1 examples whose response did not fit" in caplog.text


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"data file .*nothere.jsonl not found"):
        prepare_data(DataArguments(train_file=str(tmp_path / "nothere.jsonl")), load_tokenizer("tiny:bert"), "seq_cls")


def test_label_column_missing(tmp_path):
    texts = _rows(*[{"text": f"a fine film {i}"} for i in range(4)])
    with pytest.raises(
        DataError, match=r"seq_cls reads label_column='label', not in the train split \(columns: \['text'\]"
    ):
        _data(tmp_path, texts, texts)


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
    with unchanged(tmp_path), pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        _finetune(tmp_path, tmp_path / "out")


def test_output_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    with unchanged(tmp_path), pytest.raises(RunDirectoryError, match="cannot be written"):
        _finetune(tmp_path, tmp_path / "file" / "out")


def test_read_only_output_dir_with_earlier_results(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier result")

    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    # root (as in CI containers) may write anywhere, so the refusal of a read-only directory is simulated
    monkeypatch.setattr("hf_ext.outputs.tempfile.NamedTemporaryFile", read_only)
    with unchanged(out), pytest.raises(RunDirectoryError, match=r"cannot be written \(Permission denied\); choose a"):
        _finetune(tmp_path, out)


def test_finished_run_is_not_replaced_without_overwrite_output_dir(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out)
    with (
        unchanged(out),
        pytest.raises(RunDirectoryError, match=r"already holds a finished run .*set overwrite_output_dir=true"),
    ):
        _finetune(tmp_path, out)
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
    with (
        unchanged(tmp_path / "not_a_checkpoint"),
        pytest.raises(RunDirectoryError, match=r"is not a checkpoint \(no trainer_state.json\)"),
    ):
        _finetune(tmp_path, tmp_path / "out", f"resume_from_checkpoint={tmp_path / 'not_a_checkpoint'}")


def test_resuming_a_run_with_nothing_left_to_train_keeps_its_results(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out, "max_steps=2", "save_strategy=steps", "save_steps=1")
    with (
        unchanged(out),
        pytest.raises(RunDirectoryError, match=r"checkpoint-2 is at step 2 and this run has 2 steps: nothing is left"),
    ):
        _finetune(tmp_path, out, "max_steps=2", "save_strategy=steps", "save_steps=1", "resume_from_checkpoint=true")


def test_data_export_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with unchanged(tmp_path):
        assert cli(["data", "export", "sentiment", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; name a directory" in capsys.readouterr().err


def test_eval_subset_larger_than_the_data_says_so(tmp_path, caplog):
    from datasets import Dataset

    from hf_ext.data import eval_subset

    with caplog.at_level(logging.WARNING):
        indices = eval_subset(Dataset.from_dict({"x": list(range(5))}), 100, 0, tmp_path / "subset.json")
    assert len(indices) == 5 and "eval_subset_size=100 is more than the 5 validation examples" in caplog.text


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


def test_resume_from_a_checkpoint_of_another_model(tmp_path):
    out = tmp_path / "out"
    _finetune(tmp_path, out, "max_steps=1", "save_strategy=steps", "save_steps=1")
    with (
        unchanged(out),
        pytest.raises(RunDirectoryError, match=r"was written by another model \(model_type bert vs llama"),
    ):
        _finetune(
            tmp_path,
            tmp_path / "other",
            "model_name_or_path=tiny:llama",
            "max_steps=2",
            f"resume_from_checkpoint={out / 'checkpoint-1'}",
        )


# ---- tensor files: a truncated, tampered or foreign file is refused where it is read ----


@pytest.mark.parametrize("tamper, message", TAMPERING, ids=TAMPERING_IDS)
def test_tampered_tensor_file_is_refused_by_load_tensors(tmp_path, tamper, message):
    path = tmp_path / "basis.safetensors"
    save_tensors(path, {"layer.U": torch.eye(4), "layer.eigenvalues": torch.arange(4.0)}, {"model": "tiny:bert"})
    tamper(path)
    with unchanged(tmp_path), pytest.raises(FileFormatError, match=message):
        load_tensors(path)


def _drop_sidecar(path: Path) -> None:
    sidecar_path(path).unlink()


@pytest.mark.parametrize(
    "name, damage, expected_shapes, message",
    [
        ("nothere.safetensors", None, None, r"nothere.safetensors not found"),
        ("x.safetensors", _drop_sidecar, None, r"x.json not found"),
        ("x.safetensors", None, {"a": (3, 3)}, r"wrong shape \(a: expected \(3, 3\), found \(2, 3\)\)"),
    ],
    ids=["missing-file", "missing-sidecar", "shape-mismatch"],
)
def test_missing_or_mismatched_tensor_file(tmp_path, name, damage, expected_shapes, message):
    save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(2, 3)})
    if damage is not None:
        damage(tmp_path / "x.safetensors")
    with unchanged(tmp_path), pytest.raises(FileFormatError, match=message):
        load_tensors(tmp_path / name, expected_shapes=expected_shapes)


@pytest.mark.parametrize(
    "name, message",
    [
        ("x.pt", r"x.pt is a .pt file, a Python pickle: unpickling it can run arbitrary code, so hf_ext reads"),
        ("x.bin", r"x.bin is a .bin file, a Python pickle: .* torch.load\('x.bin', weights_only=True\)"),
        ("x.pth", r"x.pth is a .pth file, a Python pickle"),
        ("x.npy", r"x.npy: expected a .safetensors tensor file \(with its .json sidecar\), got .npy"),
    ],
    ids=["pt", "bin", "pth", "npy"],
)
def test_load_tensors_refuses_pickles_and_other_formats_by_name(tmp_path, name, message):
    (tmp_path / name).write_bytes(b"\x80\x04 never opened")
    with unchanged(tmp_path), pytest.raises(FileFormatError, match=message):
        load_tensors(tmp_path / name)


# ---- a full disk: the earlier file stays, no temporary remains ----


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_renaming_a_tensor_file_into_place(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"a": torch.ones(3)}, {"run": 1})
    monkeypatch.setattr(os, "replace", _disk_full)
    with (
        unchanged(tmp_path),
        pytest.raises(WriteError, match=r"cannot write .*x.json: No space left on device; the previous x.json") as err,
    ):
        save_tensors(path, {"a": torch.zeros(3)}, {"run": 2})  # the sidecar is renamed first, the tensors last
    assert str(err.value).endswith(
        "is left as it was; free disk space (or write to a larger disk: another output_dir) and run again"
    )
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_tensors(path)[1] == {"run": 1}


def test_disk_full_while_writing_a_tensor_file_or_a_record(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"a": torch.ones(3)}, {"run": 1})
    write_json(tmp_path / "metadata.json", {"run": 1})

    def partial_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        _disk_full()

    monkeypatch.setattr("hf_ext.io.save_file", partial_write)
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with unchanged(tmp_path):
        with pytest.raises(WriteError, match=r"x.safetensors: No space left on device; the previous x.safetensors"):
            save_tensors(path, {"a": torch.zeros(3)}, {"run": 2})
        with pytest.raises(WriteError, match=r"metadata.json: No space left on device; the previous metadata.json"):
            write_json(tmp_path / "metadata.json", {"run": 2})


def test_disk_full_is_one_line_from_a_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "replace", _disk_full)
    assert exit_on_user_error(lambda: write_json(tmp_path / "m.json", {}), "recipe") == 2
    assert capsys.readouterr().err.startswith("recipe: error: cannot write ")
    assert not any(tmp_path.iterdir())


# ---- pickled weights: refused unless allowed, and then read with weights_only=True ----


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """``(directory, state dict)``: a tiny BERT classifier whose weights are only ``pytorch_model.bin``."""
    from hf_ext.models import tiny_model

    directory = tmp_path_factory.mktemp("pickled_model")
    model, tokenizer = tiny_model("bert", "seq_cls", seed=3, num_labels=2)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    state = {name: t.clone() for name, t in model.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "training_args.bin").write_bytes(b"not weights")  # Trainer's, never loaded as weights
    return directory, state


@pytest.fixture
def torch_load_calls(monkeypatch):
    """The ``weights_only`` of every ``torch.load`` call (the real one runs)."""
    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_model_directory_with_pickled_weights_is_refused_unless_allowed(pickled_model, torch_load_calls):
    from hf_ext.models import load_model

    directory, state = pickled_model
    tokenizer = load_tokenizer(str(directory))
    with (
        unchanged(directory),
        pytest.raises(
            ConfigError, match=r"holds pickled weights \(pytorch_model.bin\) and no .safetensors file; unpickling can"
        ) as err,
    ):
        load_model(ModelArguments(model_name_or_path=str(directory)), tokenizer, ["0", "1"])
    assert "allow_pickle_weights=true" in str(err.value) and torch_load_calls == []
    arguments = ModelArguments(model_name_or_path=str(directory), allow_pickle_weights=True)
    with unchanged(directory):
        model = load_model(arguments, tokenizer, ["0", "1"])
    assert torch_load_calls == [True]  # transformers reads pytorch_model.bin with torch.load(weights_only=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_adapter_directory_with_pickled_weights_is_refused_unless_allowed(tmp_path, torch_load_calls):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from hf_ext.models import load_with_adapter, tiny_model

    model, tokenizer = tiny_model("bert", "seq_cls", num_labels=2)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    torch.save(weights, tmp_path / "adapter" / "adapter_model.bin")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with unchanged(tmp_path), pytest.raises(ConfigError, match=r"adapter holds pickled weights \(adapter_model.bin\)"):
        load_with_adapter(str(tmp_path / "base"), str(tmp_path / "adapter"), "seq_cls", None)
    with unchanged(tmp_path):
        loaded, _ = load_with_adapter(
            str(tmp_path / "base"), str(tmp_path / "adapter"), "seq_cls", None, allow_pickle_weights=True
        )
    assert torch_load_calls == [True]  # peft's torch_load: weights_only=True
    lora_a = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
    assert torch.equal(loaded.state_dict()[lora_a], weights[lora_a.replace(".default", "")])


def test_hf_ext_commands_refuse_pickled_weights_unless_given_the_flag(pickled_model, capsys, torch_load_calls):
    directory, _ = pickled_model
    with unchanged(directory):
        assert cli(["targets", str(directory), "query"]) == 2
    assert "holds pickled weights (pytorch_model.bin)" in capsys.readouterr().err and torch_load_calls == []
    with unchanged(directory):
        assert cli(["targets", str(directory), "query", "--allow-pickle-weights"]) == 0
    assert "2 linear module(s) selected" in capsys.readouterr().out and torch_load_calls == [True]


# ---- a run whose loss diverges ----

DIVERGING = [
    "learning_rate=1e30",  # Adam moves every weight by ~lr at the first step: the next loss is not finite
    "max_train_samples=64",
    "per_device_train_batch_size=8",
    "max_steps=4",
    "warmup_steps=0",
    "report_to=[]",
]


@pytest.mark.parametrize("logging_steps", [1, 100], ids=["at-the-next-log", "at-the-end-without-a-log"])
def test_a_nan_training_loss_stops_the_run_and_saves_no_model(tmp_path, logging_steps):
    """The Trainer's logging_nan_inf_filter replaces a NaN loss by the running mean: without the guard this run
    would log finite losses and save a model of NaNs."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "notes.txt").write_text("a file from before")
    with (
        unchanged(earlier),
        pytest.raises(TrainingDivergedError, match="had a NaN or infinite loss .* lower learning_rate"),
    ):
        run_recipe(
            "seq_cls",
            "seq_cls_tiny_qwen2_last_block.json",
            f"output_dir={tmp_path / 'run'}",
            *DIVERGING,
            f"logging_steps={logging_steps}",
        )
    assert not (tmp_path / "run" / "model.safetensors").exists()
