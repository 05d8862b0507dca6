"""Tests for the built-in template tasks in hf_ext.tasks."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter

import datasets
import numpy as np
import pytest

from hf_ext.tasks import REFUSAL_PREFIXES, TASK_NAMES, is_refusal, load_builtin_task, task_label_names, vocabulary

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def loaded() -> dict[str, datasets.DatasetDict]:
    return {name: load_builtin_task(name) for name in TASK_NAMES}


@pytest.fixture(scope="module")
def rows(loaded) -> dict[str, dict[str, dict[str, list]]]:
    """Column lists per task and split (``ds.to_dict()`` is much faster than iterating a column)."""
    return {name: {split: dd[split].to_dict() for split in SPLITS} for name, dd in loaded.items()}


def _tokens(s: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", s.lower())


def _token_set(strings: list[str]) -> set[str]:
    """The tokens of all strings; tokenizes each distinct whitespace-separated chunk once, for speed."""
    return set(_tokens(" ".join(set("\n".join(strings).split()))))


def test_task_names_and_label_names():
    assert TASK_NAMES == ("safety", "sentiment", "topic")
    assert task_label_names("safety") == ["benign", "harmful"]
    assert task_label_names("sentiment") == ["negative", "positive"]
    assert task_label_names("topic") == ["world", "sports", "business", "science"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sizes_columns_and_class_labels(loaded, rows, name):
    dd = loaded[name]
    assert set(dd) == set(SPLITS)
    assert {split: len(dd[split]) for split in SPLITS} == {"train": 2400, "validation": 400, "test": 400}
    for split in SPLITS:
        ds = dd[split]
        assert ds.column_names == ["text", "label", "prompt", "response"]
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == task_label_names(name)
        for column in ("text", "prompt", "response"):
            assert ds.features[column] == datasets.Value("string")
            assert all(isinstance(v, str) and v.strip() and v.isascii() for v in rows[name][split][column])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_arguments_give_identical_datasets_whatever_the_global_rng(name):
    random.seed(1)
    np.random.seed(1)
    first = load_builtin_task(name, seed=7, train_size=300, validation_size=50, test_size=60)
    random.seed(2)
    np.random.seed(2)
    state = random.getstate()
    second = load_builtin_task(name, seed=7, train_size=300, validation_size=50, test_size=60)
    assert random.getstate() == state
    for split in SPLITS:
        assert first[split].to_dict() == second[split].to_dict()


# SHA-256 of json.dumps(split rows, sort_keys=True) for the default sizes and seed 0. Any change to a template
# string, to its order or to the generator changes these: update them only for an intended change of the data.
SEED0_SHA256 = {
    "safety": {
        "train": "7a1e0f0ea14592031139f2c62a7edfd11d4c91a882bcff54a28f6d6da04ba444",
        "validation": "9d8d58056b407458d4306fa6bb5be81ada2363c34b4f259dca8224cb1f2720a9",
        "test": "d17732d2041aaeaef1d3a5deb7ab801c691aaab36c8abe9ee0a104b43bc22170",
    },
    "sentiment": {
        "train": "eb44e0abe17fb0746f4b9267effb193ef6ed6b13d1c3ed16380cdc2516ebc8d3",
        "validation": "ec1415fb82a73733848d0324b1731133a95ff228458a26a84ecc24e122b0b972",
        "test": "4f074a44c98d2591a8f2a13d59e55b7f87d9ba9f3c7d5f69bf53410156400ad1",
    },
    "topic": {
        "train": "dd0e8ca7b7eaf41bc1d40af0b65cf721235a5b614a51ab24a614e69d2c24328a",
        "validation": "3481c887b0cbd54f99c848cba6fae31fbdb8cedf7a6b5b2c5edc43ce48dc257b",
        "test": "dd427eb3445e97edfbbc2440736412698f90b8b6fc01dfb80b0c9ededdd7b652",
    },
}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_seed_0_splits_are_pinned(loaded, name):
    digests = {
        split: hashlib.sha256(json.dumps(loaded[name][split].to_list(), sort_keys=True).encode()).hexdigest()
        for split in SPLITS
    }
    assert digests == SEED0_SHA256[name]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_different_seeds_give_different_train_splits(rows, name):
    other = load_builtin_task(name, seed=1)
    texts0, texts1 = rows[name]["train"]["text"], other["train"].to_dict()["text"]
    assert texts0 != texts1
    assert len(set(texts0) & set(texts1)) < 0.9 * len(texts0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_text_shared_across_or_repeated_within_splits(rows, name):
    seen: set[str] = set()
    for split in SPLITS:
        texts = rows[name][split]["text"]
        assert len(set(texts)) == len(texts), f"duplicate text inside {split}"
        assert not seen & set(texts), f"{split} shares text with an earlier split"
        seen |= set(texts)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_labels_are_balanced_in_every_split(rows, name):
    k = len(task_label_names(name))
    for split in SPLITS:
        counts = Counter(rows[name][split]["label"])
        assert sorted(counts) == list(range(k))
        assert max(counts.values()) - min(counts.values()) == 0
    odd = load_builtin_task(name, seed=3, train_size=1001, validation_size=7, test_size=3)
    for split, size in zip(SPLITS, (1001, 7, 3)):
        counts = Counter(odd[split].to_dict()["label"])
        assert sum(counts.values()) == size
        assert max(counts.values()) - min(counts.get(label, 0) for label in range(k)) <= 1


def test_safety_refuses_exactly_the_harmful_requests(rows):
    for split in SPLITS:
        ds = rows["safety"][split]
        for text, label, prompt, response in zip(ds["text"], ds["label"], ds["prompt"], ds["response"]):
            assert prompt == text
            assert is_refusal(response) == (label == 1), (text, response)
            if label == 1:
                assert any(response.startswith(prefix) for prefix in REFUSAL_PREFIXES)
                assert len(response.split(".")) >= 3, "a refusal gives a reason after its opener"


def test_safety_responses_vary():
    ds = load_builtin_task("safety", seed=5)["train"].to_dict()
    refusals = {r for r, label in zip(ds["response"], ds["label"]) if label == 1}
    answers = {r for r, label in zip(ds["response"], ds["label"]) if label == 0}
    assert len({r.split(".")[0] for r in refusals}) >= len(REFUSAL_PREFIXES)
    assert len(refusals) > 20
    assert len(answers) > 100


def test_is_refusal():
    for prefix in REFUSAL_PREFIXES:
        assert is_refusal(f"{prefix} with that.")
        assert is_refusal(f"  \n{prefix.upper()} with that.")
    assert not is_refusal("Sure. To bake bread at home, start by mixing flour and water.")
    assert not is_refusal("Well, I cannot help but smile.")
    assert not is_refusal("")


@pytest.mark.parametrize(
    ("name", "instruction"),
    [
        ("sentiment", "Is the sentiment of this review positive or negative?\nReview:"),
        (
            "topic",
            "What is the topic of this news headline? Answer with world, sports, business or science.\nHeadline:",
        ),
    ],
)
def test_classification_prompts_and_responses(rows, name, instruction):
    names = task_label_names(name)
    for split in SPLITS:
        ds = rows[name][split]
        for text, label, prompt, response in zip(ds["text"], ds["label"], ds["prompt"], ds["response"]):
            assert response == names[label]
            assert prompt == f"{instruction} {text}"


def test_vocabulary_covers_everything_generated():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    assert all(token == token.lower() for token in vocab)
    assert 300 <= len(vocab) <= 2000
    generated = {
        s
        for name in TASK_NAMES
        for seed in (0, 1, 2)
        for ds in load_builtin_task(name, seed=seed).values()
        for column in ("text", "prompt", "response")
        for s in ds.to_dict()[column]
    }
    assert not _token_set(sorted(generated)) - set(vocab)


@pytest.mark.parametrize("name", ["sentiment", "topic"])
def test_error_reports_what_exists_and_what_was_asked(name):
    with pytest.raises(ValueError, match=rf"{name}.*unique examples") as info:
        load_builtin_task(name, train_size=100_000)
    message = str(info.value)
    assert "100800" in message  # 100000 + 400 + 400
    available = int(re.search(r"has (\d+) unique examples", message).group(1))
    assert available >= 3200
    # Both pools are balanced, so the reported number is exactly what one can ask for.
    whole = load_builtin_task(name, train_size=available, validation_size=0, test_size=0)
    assert len(set(whole["train"].to_dict()["text"])) == available
    with pytest.raises(ValueError, match=str(available)):
        load_builtin_task(name, train_size=available, validation_size=len(task_label_names(name)), test_size=0)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="safety, sentiment, topic"):
        load_builtin_task("poetry")
    with pytest.raises(ValueError, match="safety, sentiment, topic"):
        task_label_names("poetry")
    with pytest.raises(ValueError, match="non-negative"):
        load_builtin_task("topic", test_size=-1)


def test_generation_is_fast():
    for name in TASK_NAMES:
        start = time.perf_counter()
        load_builtin_task(name, seed=12345)
        assert time.perf_counter() - start < 1.0, name


# --- learnability ---------------------------------------------------------------------------------------


def _bag_of_words(texts: list[str], index: dict[str, int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Binary unigram + bigram features; the index is built from the first (training) call."""
    grams = []
    for text in texts:
        tokens = _tokens(text)
        grams.append(set(tokens) | {f"{a} {b}" for a, b in zip(tokens, tokens[1:])})
    if index is None:
        index = {g: i for i, g in enumerate(sorted(set().union(*grams)))}
    cells = [(row, index[g]) for row, gs in enumerate(grams) for g in gs if g in index]
    x = np.zeros((len(texts), len(index)), dtype=np.float32)
    x[tuple(np.asarray(cells).T)] = 1.0
    return x, index


def _nearest_centroid_accuracy(train: dict[str, list], test: dict[str, list]) -> float:
    """Cosine nearest-centroid classifier on binary bag-of-words features."""
    x, index = _bag_of_words(train["text"])
    x_test, _ = _bag_of_words(test["text"], index)
    y = np.asarray(train["label"])
    k = y.max() + 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids = np.stack([x[y == label].mean(axis=0) for label in range(k)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return float(np.mean((x_test @ centroids.T).argmax(axis=1) == np.asarray(test["label"])))


def _first_word_accuracy(train: dict[str, list], test: dict[str, list]) -> float:
    """Predict the majority training label of the text's first word (the overall majority if unseen)."""
    by_word: dict[str, Counter] = {}
    for text, label in zip(train["text"], train["label"]):
        by_word.setdefault(_tokens(text)[0], Counter())[label] += 1
    fallback = Counter(train["label"]).most_common(1)[0][0]
    predictions = [
        by_word[w].most_common(1)[0][0] if (w := _tokens(text)[0]) in by_word else fallback for text in test["text"]
    ]
    return float(np.mean(np.asarray(predictions) == np.asarray(test["label"])))


def _best_single_token_accuracy(ds: dict[str, list]) -> float:
    """Accuracy of the best rule "label A if token t occurs, else label B" on a binary task."""
    y = np.asarray(ds["label"])
    x, index = _bag_of_words(ds["text"])
    unigrams = [i for g, i in index.items() if " " not in g]
    hits = x[:, unigrams].T @ (y == 1) + (1 - x[:, unigrams]).T @ (y == 0)
    return float(max(hits.max(), (len(y) - hits).max()) / len(y))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_bag_of_words_centroids_learn_every_task(rows, name):
    accuracy = _nearest_centroid_accuracy(rows[name]["train"], rows[name]["test"])
    assert accuracy > 0.8, accuracy


def test_safety_is_not_separable_by_the_first_word(rows):
    accuracy = _first_word_accuracy(rows["safety"]["train"], rows["safety"]["test"])
    assert accuracy < 0.7, accuracy


def test_sentiment_is_not_a_single_keyword_task(rows):
    assert _best_single_token_accuracy(rows["sentiment"]["train"]) < 0.8
