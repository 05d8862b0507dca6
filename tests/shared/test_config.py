import json

import pytest
from transformers import TrainingArguments

from hf_ext.config import ConfigError, DataArguments, ModelArguments, parse_config, parse_overrides

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
