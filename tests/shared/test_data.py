import json

import numpy as np
import pytest
import torch

from hf_ext.cli import main as cli
from hf_ext.config import DataArguments
from hf_ext.data import (
    data_collator,
    infer_label_names,
    load_raw_datasets,
    prepare_data,
    tokenize_datasets,
)
from hf_ext.errors import DataError
from hf_ext.models import load_tokenizer
from hf_ext.tasks import PLAIN_PROMPT


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("topic")
    assert cli(["data", "export", "topic", "--out", str(out)]) == 0
    return out


def test_builtin_task_is_the_default():
    raw = load_raw_datasets(DataArguments(max_train_samples=100, max_eval_samples=20))
    assert (len(raw["train"]), len(raw["validation"]), len(raw["test"])) == (100, 20, 20)
    assert infer_label_names(raw, DataArguments()) == ["negative", "positive"]


def test_local_jsonl_files_match_the_builtin_task(exported):
    args = DataArguments(
        train_file=str(exported / "train.jsonl"),
        validation_file=str(exported / "validation.jsonl"),
        test_file=str(exported / "test.jsonl"),
    )
    raw = load_raw_datasets(args)
    builtin = load_raw_datasets(DataArguments(dataset_name="builtin:topic"))
    assert raw["train"]["text"] == builtin["train"]["text"]
    assert raw["test"]["label"] == builtin["test"]["label"]


def test_csv_with_string_labels_and_carved_validation(tmp_path):
    rows = [("a great film", "pos"), ("an awful film", "neg"), ("a fine meal", "pos"), ("a cold meal", "neg")] * 10
    path = tmp_path / "train.csv"
    path.write_text("sentence,sentiment\n" + "".join(f"{text},{label}\n" for text, label in rows))
    args = DataArguments(
        train_file=str(path), text_column="sentence", label_column="sentiment", validation_split_percentage=25
    )
    raw = load_raw_datasets(args)
    assert (len(raw["train"]), len(raw["validation"])) == (30, 10)
    labels = infer_label_names(raw, args)
    assert labels == ["neg", "pos"]
    tokenized = tokenize_datasets(raw, load_tokenizer("tiny:bert"), "seq_cls", args, labels)
    for text, label in zip(raw["train"]["sentence"], tokenized["train"]["labels"]):
        assert label == (1 if text.startswith(("a great", "a fine")) else 0)


def test_json_array_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"text": "a great film", "label": 1}, {"text": "an awful film", "label": 0}] * 10))
    raw = load_raw_datasets(DataArguments(train_file=str(path)))
    assert len(raw["train"]) + len(raw["validation"]) == 20
    assert infer_label_names(raw, DataArguments()) == ["0", "1"]


def test_bad_data_arguments(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl not found"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "missing.jsonl")))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"expected a .json, .jsonl or .csv"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "a.txt")))
    with pytest.raises(ValueError, match="safety, sentiment, topic"):
        load_raw_datasets(DataArguments(dataset_name="builtin:nope"))
    raw = load_raw_datasets(DataArguments(max_train_samples=10, max_eval_samples=10))
    with pytest.raises(ValueError, match=r"column\(s\) \['sentence'\] not in the data"):
        tokenize_datasets(
            raw, load_tokenizer("tiny:bert"), "seq_cls", DataArguments(text_column="sentence"), ["a", "b"]
        )
    with pytest.raises(ValueError, match="label column 'stars'"):
        infer_label_names(raw, DataArguments(label_column="stars"))


def test_causal_lm_loss_covers_the_response_only():
    tokenizer = load_tokenizer("tiny:llama")
    args = DataArguments(dataset_name="builtin:safety", max_train_samples=8, max_eval_samples=8)
    data = prepare_data(args, tokenizer, "causal_lm")
    row, raw = data.train[0], data.raw["train"][0]
    prompt_ids = tokenizer(PLAIN_PROMPT.format(prompt=raw["prompt"]))["input_ids"]
    response_ids = tokenizer(" " + raw["response"], add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert row["labels"] == [-100] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]
    batch = data.collator([data.train[i] for i in range(4)])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_causal_lm_uses_the_chat_template_when_present():
    tokenizer = load_tokenizer("tiny:llama")
    tokenizer.chat_template = (
        "{% for m in messages %}<s> question {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} answer :{% endif %}"
    )
    args = DataArguments(dataset_name="builtin:topic", max_train_samples=4, max_eval_samples=4)
    templated = tokenizer.decode(prepare_data(args, tokenizer, "causal_lm").train[0]["input_ids"])
    assert templated.startswith("<s> question what is the topic") and templated.count("<s>") == 1
    assert " answer : " in templated and "user" not in templated
    args.use_chat_template = False
    plain = tokenizer.decode(prepare_data(args, tokenizer, "causal_lm").train[0]["input_ids"])
    assert plain.startswith("<s> user : what is the topic") and " assistant : " in plain


def test_a_split_whose_responses_are_all_truncated_away_is_refused():
    tokenizer = load_tokenizer("tiny:llama")
    args = DataArguments(dataset_name="builtin:safety", max_seq_length=6, max_train_samples=20, max_eval_samples=4)
    with pytest.raises(DataError, match="every one of the 20 examples of the train split was dropped"):
        prepare_data(args, tokenizer, "causal_lm")  # every prompt is longer than 6 tokens


def test_metrics():
    from transformers import EvalPrediction

    from hf_ext.data import argmax_logits, compute_metrics_fn

    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    preds = argmax_logits(logits, None).numpy()
    scores = compute_metrics_fn("seq_cls")(EvalPrediction(preds, [1, 0, 0]))
    # class 0: 1 hit, 1 predicted, 2 true -> F1 2/3; class 1: 1 hit, 2 predicted, 1 true -> F1 2/3
    assert scores == {"accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(2 / 3)}
    unbalanced = compute_metrics_fn("seq_cls")(EvalPrediction(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1])))
    assert unbalanced == {"accuracy": pytest.approx(3 / 4), "macro_f1": pytest.approx((6 / 7 + 0) / 2)}
    predicted = [[6, 7, 0, 1]]
    labels = [[-100, 6, 9, 8]]  # position t predicts token t + 1
    out = compute_metrics_fn("causal_lm")(EvalPrediction(predicted, labels))
    assert out == {"response_token_accuracy": pytest.approx(1 / 3)}


def test_collator_pads_classification_batches():
    tokenizer = load_tokenizer("tiny:bert")
    batch = data_collator(tokenizer, "seq_cls")(
        [
            {"input_ids": [2, 10, 3], "attention_mask": [1, 1, 1], "labels": 1},
            {"input_ids": [2, 3], "attention_mask": [1, 1], "labels": 0},
        ]
    )
    assert batch["input_ids"].tolist() == [[2, 10, 3], [2, 3, tokenizer.pad_token_id]]
    assert batch["labels"].tolist() == [1, 0]
