"""Data that must not change with the training seed: the carved-out validation split, the evaluation subset
(checked by content), sentence-pair tokenisation, and head measurements with NaN in JSONL."""

import json

import numpy as np
import pytest
from datasets import Dataset

from hf_ext.config import DataArguments
from hf_ext.data import eval_subset, load_raw_datasets, prepare_data
from hf_ext.errors import DataError, RunDirectoryError
from hf_ext.heads.analysis import read_jsonl, write_jsonl
from hf_ext.models import load_tokenizer


def _csv(tmp_path, pair=False):
    rows = [(f"premise {i}", f"hypothesis {i % 7}", "yes" if i % 2 else "no") for i in range(60)]
    path = tmp_path / "train.csv"
    header = "premise,hypothesis,label\n" if pair else "premise,label\n"
    path.write_text(header + "".join((f"{p},{h},{y}\n" if pair else f"{p},{y}\n") for p, h, y in rows))
    return path


def test_carved_validation_split_depends_on_split_seed_not_on_the_training_seed(tmp_path):
    args = DataArguments(train_file=str(_csv(tmp_path)), text_column="premise", validation_split_percentage=20)
    first = load_raw_datasets(args)["validation"]["premise"]
    assert load_raw_datasets(args)["validation"]["premise"] == first and len(first) == 12
    tokenizer = load_tokenizer("tiny:bert")
    seeds = [prepare_data(args, tokenizer, "seq_cls").raw["validation"]["premise"] for _ in range(2)]
    assert seeds[0] == seeds[1] == first
    other = load_raw_datasets(DataArguments(**{**args.__dict__, "split_seed": 1}))["validation"]["premise"]
    assert sorted(other) != sorted(first)


def test_eval_subset_is_checked_by_content_on_reuse(tmp_path):
    data = Dataset.from_dict({"input_ids": [[i, i + 1] for i in range(50)], "labels": [i % 2 for i in range(50)]})
    path = tmp_path / "subset.json"
    indices = eval_subset(data, 10, 3, path)
    saved = json.loads(path.read_text())
    assert saved["indices"] == indices and len(saved["hashes"]) == 10 and len(set(saved["hashes"])) == 10
    assert eval_subset(data, 10, 3, path) == indices  # the same examples: reused
    shuffled = data.select(list(range(49, -1, -1)))  # same size and seed, other examples at those indices
    with pytest.raises(RunDirectoryError, match="content hashes differ"):
        eval_subset(shuffled, 10, 3, path)
    smaller = data.select(range(max(indices)))  # the subset's last example is gone, as if filtered out
    with pytest.raises(RunDirectoryError, match="other validation examples"):
        eval_subset(smaller, 10, 3, path)


def test_sentence_pair_task_tokenises_both_segments(tmp_path):
    args = DataArguments(
        train_file=str(_csv(tmp_path, pair=True)), text_column="premise", text_pair_column="hypothesis"
    )
    tokenizer = load_tokenizer("tiny:bert")
    data = prepare_data(args, tokenizer, "seq_cls")
    row = data.raw["train"][0]
    expected = tokenizer(row["premise"], row["hypothesis"])["input_ids"]
    assert data.train[0]["input_ids"] == expected
    assert expected.count(tokenizer.sep_token_id) == 2  # [CLS] premise [SEP] hypothesis [SEP]
    missing = DataArguments(train_file=args.train_file, text_column="premise", text_pair_column="second")
    with pytest.raises(DataError, match="text_pair_column='second'"):
        prepare_data(missing, tokenizer, "seq_cls")


def test_nan_measurements_round_trip_through_standard_jsonl(tmp_path):
    values = np.arange(6, dtype=float).reshape(2, 3)
    values[1, 2] = np.nan
    write_jsonl(tmp_path / "I.jsonl", {"loss_increase": values})
    lines = (tmp_path / "I.jsonl").read_text().splitlines()
    assert "NaN" not in lines[-1] and json.loads(lines[-1])["loss_increase"] is None
    back = read_jsonl(tmp_path / "I.jsonl", "loss_increase")
    np.testing.assert_array_equal(back, values)  # NaN where it was, not reported as a missing head
