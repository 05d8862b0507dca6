"""Tests for hf_ext.data_files: file:line errors from a bounded prefix, one-line errors from datasets beyond it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_ext import data_files
from hf_ext.data_files import CHECK_BYTES, check_data_file, load_data_files
from hf_ext.errors import DataError


def _line(i: int) -> dict:
    return {"text": f"review number {i}", "label": "pos" if i % 2 else "neg"}


def _jsonl_lines(count: int) -> str:
    return "".join(json.dumps(_line(i)) + "\n" for i in range(count))


def _rows_past_the_bound(render) -> str:
    """Rendered rows ``render(i)``, as many as it takes to pass CHECK_BYTES by 64 KiB."""
    parts, size, i = [], 0, 0
    while size <= CHECK_BYTES + 64 * 1024:
        parts.append(render(i))
        size += len(parts[-1])
        i += 1
    return "".join(parts)


def _large_jsonl(path: Path, tail: str = "") -> Path:
    """JSON lines a bit larger than CHECK_BYTES, then ``tail``."""
    path.write_text(_rows_past_the_bound(lambda i: json.dumps(_line(i)) + "\n") + tail)
    return path


def _large_csv(path: Path, tail: str = "") -> Path:
    """CSV rows a bit larger than CHECK_BYTES, then ``tail``."""
    path.write_text("text,label\n" + _rows_past_the_bound(lambda i: "{text},{label}\n".format(**_line(i))) + tail)
    return path


class _ByteCounter:
    """Wraps ``open`` in hf_ext.data_files and counts the bytes its files return."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        file = open(*args, **kwargs)  # noqa: SIM115 (closed by the caller's with block)
        counter = self

        class Counted:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                file.close()

            def read(self, size=-1):
                data = file.read(size)
                counter.bytes += len(data)
                return data

            def readline(self, size=-1):
                data = file.readline(size)
                counter.bytes += len(data)
                return data

        return Counted()


@pytest.fixture
def byte_counter(monkeypatch) -> _ByteCounter:
    counter = _ByteCounter()
    monkeypatch.setattr(data_files, "open", counter, raising=False)
    return counter


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".jsonl", '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": \n', r"train.jsonl:3: not valid JSON"),
        (".jsonl", '{"text": "a", "label": "pos"}\n["b", "neg"]\n', r"train.jsonl: line 2 is a JSON list"),
        (
            ".jsonl",
            '{"text": "a", "label": "pos"}\n{"text": "b", "label": 1}\n',
            r"column 'label' holds text on line 1 but number on line 2",
        ),
        (
            ".json",
            '[\n {"text": "a", "label": "pos"},\n {"text": "b" "label": "neg"}\n]\n',
            r"train.json:3: not valid",
        ),
        (".json", '[{"text": "a"}, 3]', r"train.json: item 2 is a JSON int"),
        (".csv", "text,label\na film,pos\na film, sadly,neg\n", r"train.csv:3: 3 fields, but the header has 2"),
        (".jsonl", "\n\n", r"train.jsonl is empty"),
        (".csv", "text,label\n", r"train.csv holds no examples"),
    ],
)
def test_small_file_errors_name_the_file_and_line(tmp_path, suffix, text, message):
    (tmp_path / f"train{suffix}").write_text(text)
    with pytest.raises(DataError, match=message):
        check_data_file(tmp_path / f"train{suffix}")


def test_bad_line_inside_the_prefix_of_a_large_file_is_named_by_line(tmp_path, byte_counter):
    path = tmp_path / "train.jsonl"
    good = _jsonl_lines(10)
    path.write_text(good + '{"text": "oops", "label": }\n' + _large_jsonl(tmp_path / "big.jsonl").read_text())
    with pytest.raises(DataError, match=r"train.jsonl:11: not valid JSON"):
        check_data_file(path)
    assert byte_counter.bytes <= CHECK_BYTES + 1


def test_large_file_is_checked_from_a_prefix_and_loads_whole(tmp_path, byte_counter):
    path = _large_jsonl(tmp_path / "train.jsonl")
    assert check_data_file(path) == ["text", "label"]
    assert byte_counter.calls == 1
    assert byte_counter.bytes <= CHECK_BYTES + 1 < path.stat().st_size
    loaded = load_data_files({"train": path}, cache_dir=tmp_path / "cache")
    lines = path.read_text().splitlines()
    assert loaded["train"].num_rows == len(lines)
    assert loaded["train"][-1] == json.loads(lines[-1])


def test_large_csv_is_checked_from_a_prefix(tmp_path, byte_counter):
    path = _large_csv(tmp_path / "train.csv", tail="a film, sadly,neg\n")
    assert check_data_file(path) == ["text", "label"]
    assert byte_counter.bytes <= CHECK_BYTES + 1


def test_large_json_array_is_checked_from_a_prefix(tmp_path, byte_counter):
    path = tmp_path / "train.json"
    items = [_line(i) for i in range(CHECK_BYTES // 40)]
    path.write_text(json.dumps(items))  # one line: the prefix ends inside an item
    assert check_data_file(path) == ["text", "label"]
    assert byte_counter.bytes <= CHECK_BYTES + 1
    path.write_text("[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n")
    assert check_data_file(path) == ["text", "label"]
    path.write_text('[\n{"text": "a", "label": "pos"},\n{"text": "b", "label": "neg"} x\n' + path.read_text()[2:])
    with pytest.raises(DataError, match=r"train.json:3: not valid JSON"):
        check_data_file(path)


def test_first_line_longer_than_the_prefix_is_read_whole(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "x" * (CHECK_BYTES + 10), "label": "pos"}) + "\n" + _jsonl_lines(3))
    assert check_data_file(path) == ["text", "label"]


@pytest.mark.parametrize(
    ("suffix", "tail"),
    [(".jsonl", '{"text": "oops", "label": }\n'), (".jsonl", "[1, 2]\n"), (".csv", '"unterminated,pos\n')],
    ids=["jsonl-syntax", "jsonl-not-an-object", "csv-open-quote"],
)
def test_bad_line_beyond_the_prefix_is_one_line_naming_the_file(tmp_path, byte_counter, suffix, tail):
    make = _large_csv if suffix == ".csv" else _large_jsonl
    path = make(tmp_path / f"train{suffix}", tail=tail)
    columns = check_data_file(path)
    assert columns == ["text", "label"]
    assert byte_counter.bytes <= CHECK_BYTES + 1
    with pytest.raises(DataError) as info:
        load_data_files({"train": path}, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"data file {path} cannot be read by datasets (")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_bytes_that_are_not_utf8_beyond_the_prefix(tmp_path):
    path = _large_jsonl(tmp_path / "train.jsonl")
    with path.open("ab") as file:
        file.write(b'{"text": "\xff\xfe", "label": "pos"}\n')
    check_data_file(path)
    with pytest.raises(DataError, match=r"train.jsonl cannot be read by datasets \(not UTF-8 text"):
        load_data_files({"train": path}, cache_dir=tmp_path / "cache")


def test_the_bad_file_of_several_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text(_jsonl_lines(4))
    (tmp_path / "validation.jsonl").write_text(_jsonl_lines(2) + "{not json\n")
    with pytest.raises(DataError, match=r"validation.jsonl cannot be read") as info:
        load_data_files(
            {"train": tmp_path / "train.jsonl", "validation": tmp_path / "validation.jsonl"},
            cache_dir=tmp_path / "cache",
        )
    assert "train.jsonl" not in str(info.value)


def test_splits_whose_columns_do_not_fit_together_are_both_named(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n")
    (tmp_path / "validation.csv").write_text("text,label\nc,pos\n")
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "validation.csv"}
    with pytest.raises(DataError, match=r"train.csv, .*validation.csv cannot be read together") as info:
        load_data_files(files, cache_dir=tmp_path / "cache")
    assert "one kind of value in every split" in str(info.value)


def test_load_data_files_keeps_the_splits_and_refuses_mixed_formats(tmp_path):
    (tmp_path / "train.jsonl").write_text(_jsonl_lines(4))
    (tmp_path / "test.jsonl").write_text(_jsonl_lines(2))
    loaded = load_data_files(
        {"train": tmp_path / "train.jsonl", "test": str(tmp_path / "test.jsonl")}, cache_dir=tmp_path / "cache"
    )
    assert list(loaded) == ["train", "test"]
    assert loaded["test"].to_list() == [json.loads(line) for line in _jsonl_lines(2).splitlines()]
    (tmp_path / "test.csv").write_text("text,label\na,pos\n")
    with pytest.raises(DataError, match=r"mix formats \['csv', 'json'\]"):
        load_data_files({"train": tmp_path / "train.jsonl", "test": tmp_path / "test.csv"})
