import json

import pytest
from transformers import TrainingArguments

from hf_ext.config import ConfigError, DataArguments, ModelArguments
from hf_ext.parsing import parse_config, parse_overrides

TYPES = (ModelArguments, DataArguments, TrainingArguments)


def _write(tmp_path, values):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_parses_every_group(tmp_path):
    path = _write(
        tmp_path,
        {
            "model_name_or_path": "tiny:llama",
            "task_type": "causal_lm",
            "max_seq_length": 32,
            "output_dir": str(tmp_path / "out"),
            "learning_rate": 1,
            "report_to": ["tensorboard"],
        },
    )
    model_args, data_args, training_args = parse_config(TYPES, [path])
    assert model_args.model_name_or_path == "tiny:llama" and model_args.task_type == "causal_lm"
    assert data_args.max_seq_length == 32 and data_args.dataset_name == "builtin:sentiment"
    assert training_args.learning_rate == 1.0 and training_args.report_to == ["tensorboard"]


def test_overrides_replace_single_keys(tmp_path):
    path = _write(tmp_path, {"output_dir": str(tmp_path / "a"), "learning_rate": 0.1})
    _, data_args, training_args = parse_config(
        TYPES, [path, "learning_rate=2e-4", "output_dir=runs/b", "max_train_samples=null"]
    )
    assert training_args.learning_rate == 2e-4 and training_args.output_dir == "runs/b"
    assert data_args.max_train_samples is None
    assert parse_overrides(["a=[1, 2]", "b=text with spaces", "c=true"]) == {
        "a": [1, 2],
        "b": "text with spaces",
        "c": True,
    }
    with pytest.raises(ConfigError, match="write key=value"):
        parse_overrides(["learning_rate"])


def test_unknown_key_is_named_with_suggestions(tmp_path):
    path = _write(tmp_path, {"output_dir": "x", "learning_rat": 0.1, "zzz_qqq": 1})
    with pytest.raises(ConfigError) as err:
        parse_config(TYPES, [path])
    message = str(err.value)
    assert "'learning_rat' (did you mean 'learning_rate'" in message
    assert "'zzz_qqq'" in message


def test_wrong_types_are_named(tmp_path):
    for key, value, expected in [
        ("learning_rate", "fast", "expected float"),
        ("max_seq_length", 12.5, "expected int"),
        ("task_type", "regression", "expected one of 'seq_cls', 'causal_lm'"),
        ("use_chat_template", "yes", "expected bool"),
    ]:
        with pytest.raises(ConfigError, match=f"{key}=.*is invalid; {expected}"):
            parse_config(TYPES, [_write(tmp_path, {"output_dir": "x", key: value})])


def test_unreadable_or_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_config(TYPES, [str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_config(TYPES, [str(bad)])
    with pytest.raises(ConfigError, match="usage: .*CONFIG.json"):
        parse_config(TYPES, [])
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config(TYPES, [str(tmp_path / "list.json")])


def test_every_field_has_help():
    import dataclasses

    for cls in (ModelArguments, DataArguments):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_unused_dataset_name_is_warned_even_when_max_seq_length_is_lowered(tmp_path, caplog):
    """The warning fires once the keys are read, whatever copies of the arguments the data loading makes."""
    from hf_ext.config import HfExtTrainingArguments
    from hf_ext.data import prepare_data
    from hf_ext.models import load_tokenizer

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(20)))
    config = _write(
        tmp_path,
        {"dataset_name": "builtin:topic", "train_file": str(train), "max_seq_length": 100000, "output_dir": "o"},
    )
    with caplog.at_level("WARNING"):
        _, data_args, _ = parse_config((ModelArguments, DataArguments, HfExtTrainingArguments), [config])
        prepare_data(data_args, load_tokenizer("embedded:minilm"), "seq_cls")
    messages = [r.getMessage() for r in caplog.records]
    assert any("max_seq_length=100000 is more than the model takes" in m for m in messages), messages
    assert any("train_file is set: dataset_name='builtin:topic' is not used" in m for m in messages), messages


def test_dataset_name_left_at_its_default_is_not_warned(tmp_path, caplog):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "a", "label": 0}) + "\n")
    with caplog.at_level("WARNING"):
        parse_config(TYPES, [_write(tmp_path, {"train_file": str(train), "output_dir": "o"})])
    assert not any("is not used" in r.getMessage() for r in caplog.records)


def test_run_record_is_a_field_that_replace_carries_and_hf_argument_parser_accepts(tmp_path):
    import dataclasses

    from transformers import HfArgumentParser

    from hf_ext.config import HfExtTrainingArguments, given_keys

    types = (ModelArguments, DataArguments, HfExtTrainingArguments)
    *_, args = parse_config(types, [_write(tmp_path, {"output_dir": "o", "seed": 3})], recipe=__file__)
    copy = dataclasses.replace(args, output_dir="p")
    assert copy.run_record is args.run_record and given_keys(copy) == {"output_dir", "seed"}
    assert given_keys(copy, DataArguments) == frozenset()
    assert args.run_record.recipe == "test_config" and args.run_record.config_file.endswith("config.json")
    # the plain transformers parser still takes our dataclasses (one run_record option, not a clash)
    model_args, _, plain = HfArgumentParser(types).parse_dict({"output_dir": "o"})
    assert plain.run_record is None and model_args.model_name_or_path == "embedded:minilm"


def test_a_deepspeed_launch_without_the_package_is_one_config_error(tmp_path, monkeypatch):
    import importlib.util

    from hf_ext.config import HfExtTrainingArguments

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="deepspeed package is not installed: pip install deepspeed"):
        parse_config((ModelArguments, DataArguments, HfExtTrainingArguments), [_write(tmp_path, {"output_dir": "o"})])
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(ConfigError, match="deepspeed='ds.json' asks for DeepSpeed"):
        HfExtTrainingArguments(output_dir="o", deepspeed="ds.json")
