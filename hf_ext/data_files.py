"""Checks of local data files before ``datasets`` reads them, so a bad line is named by file and line.

``datasets`` (through pyarrow) reports an unparseable line, a column whose values change type
(``"label": 1`` on one line, ``"label": "pos"`` on another) or an empty file with a long traceback
that names neither. :func:`check_data_file` parses the first :data:`CHECK_BYTES` bytes of the file as
text and raises :class:`~hf_ext.errors.DataError` with the file, the line and what to fix; a file no
larger than that is checked whole. The rest of a larger file is read only once, by ``datasets``:
:func:`load_data_files` turns a failure there into a one-line :class:`~hf_ext.errors.DataError` that
names the file.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DataError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv"}
CHECK_BYTES = 4 * 1024 * 1024
"""How much of a data file :func:`check_data_file` reads: the first 4 MiB, cut back to the last whole line."""

_HINTS = {
    "json": "every line must be one JSON object (or the file one JSON array of objects), with one kind of value "
    "per column",
    "csv": "every row needs as many fields as the header; quote fields that contain commas, quotes or newlines",
}
_WHITESPACE = re.compile(r"\s*")
_BLOCK_ROW = re.compile(r" in row \d+$")  # pyarrow counts rows from the start of a block, not of the file


def data_format(path: str | Path) -> str:
    """``"json"`` or ``"csv"`` by the file's suffix; a missing file or another suffix is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file {path} is a directory, not a file" if path.is_dir() else f"data file {path} not found"
        )
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"data file {path}: expected a .json, .jsonl or .csv file, got {suffix or 'no suffix'}")
    return FORMATS[suffix]


def check_data_file(path: str | Path) -> list[str]:
    """Parse the start of ``path`` (JSON lines, a JSON array of objects, or CSV with a header) and return its
    column names.

    A file of at most :data:`CHECK_BYTES` bytes is checked whole. Of a larger file only the first
    :data:`CHECK_BYTES` bytes are read, cut back to the last line break (a JSON-lines or CSV file whose first
    line is longer is read to the end of that line); a record that may continue past that prefix is left to
    ``datasets``, and so is everything after it (see :func:`load_data_files`). The column names are those of
    the records checked.

    Raises:
        DataError: the file is empty, a line is not a JSON object, a CSV row has the wrong number of
            fields, or a column holds values of different kinds (text on one line, a number on another).
    """
    path = Path(path)
    kind = data_format(path)
    text, cut = _read_prefix(path, kind)
    if not text.strip():
        if cut:
            return []
        raise DataError(f"data file {path} is empty: it holds no examples")
    rows = _csv_rows(path, text, cut) if kind == "csv" else _json_rows(path, text, cut)
    if not rows and not cut:
        raise DataError(f"data file {path} holds no examples")
    if kind == "json":
        _check_column_kinds(path, rows)
    return list(dict.fromkeys(column for _, row in rows for column in row))


def load_data_files(files: Mapping[str, str | Path], *, cache_dir: str | Path | None = None):
    """``datasets.load_dataset(format, data_files=files)``: local data files as a ``DatasetDict``, one split per
    file, with a one-line error naming the file that ``datasets`` cannot read.

    All files must have one format (json/jsonl, or csv). They are loaded together, as ``datasets`` does, so
    the splits share one set of features. When that fails (a bad line past what :func:`check_data_file`
    reads, bytes that are not UTF-8, values that do not fit the features of an earlier split) and there are
    several files, each is loaded on its own to find the one to name. The loaded Arrow data is validated as
    well: pyarrow's JSON reader can let bytes that are not UTF-8 into a text column, which would only fail
    later, when the row is read.

    Raises:
        DataError: the files mix formats, one is missing, or ``datasets`` cannot read them; the message is
            one line with the file(s) and ``datasets``' reason.
    """
    import pyarrow as pa
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    errors = (DatasetGenerationError, pa.ArrowException, UnicodeDecodeError)
    kinds = {data_format(path) for path in files.values()}
    if len(kinds) > 1:
        raise DataError(f"data files mix formats {sorted(kinds)}; use one format for all splits")
    kind = kinds.pop()
    cache = None if cache_dir is None else str(cache_dir)

    def load(subset: Mapping[str, str | Path]):
        loaded = load_dataset(kind, data_files={split: str(path) for split, path in subset.items()}, cache_dir=cache)
        for split, dataset in loaded.items():
            try:
                dataset.data.validate(full=True)
            except pa.ArrowInvalid as err:
                raise _unreadable([subset[split]], kind, err) from None
        return loaded

    try:
        return load(files)
    except errors as err:
        failure = err
    if len(files) > 1:
        for split, path in files.items():
            try:
                load({split: path})
            except errors as err:
                failure, files = err, {split: path}
                break
    raise _unreadable(list(files.values()), kind, failure) from None


def _unreadable(paths: list[str | Path], kind: str, err: BaseException) -> DataError:
    """The one-line error for files that ``datasets`` failed to read with ``err``."""
    if len(paths) == 1:
        return DataError(f"data file {paths[0]} cannot be read by datasets ({_reason(err)}); {_HINTS[kind]}")
    return DataError(
        f"data files {', '.join(map(str, paths))} cannot be read together by datasets ({_reason(err)}); "
        "a column must hold one kind of value in every split"
    )


def _reason(err: BaseException) -> str:
    """The first line of the most specific message in the exception chain."""
    cause = err.__cause__ or err.__context__ or err
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text: {cause.reason}"
    if "Invalid UTF8" in str(cause):
        return "not UTF-8 text"
    for line in str(cause).splitlines():
        if line.strip():
            return _BLOCK_ROW.sub("", line.strip())
    return type(cause).__name__


def _read_prefix(path: Path, kind: str) -> tuple[str, bool]:
    """The text at the start of ``path`` (all of it when it has at most :data:`CHECK_BYTES` bytes), and
    whether the file goes on after it."""
    with open(path, "rb") as file:
        head = file.read(CHECK_BYTES + 1)
        cut = len(head) > CHECK_BYTES
        if cut:
            head = head[:CHECK_BYTES]
            end = head.rfind(b"\n")
            if end >= 0:
                head = head[: end + 1]
            elif not (kind == "json" and head.lstrip().startswith(b"[")):
                head += file.readline()
                cut = bool(file.read(1))
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if not (cut and err.end == len(head)):
            raise DataError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        text = head[: err.start].decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n"), cut


def _json_rows(path: Path, text: str, cut: bool) -> list[tuple[int, dict[str, Any]]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = _json_array_prefix(text) if cut else json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected an array of objects") from None
        rows = list(enumerate(items, start=1))
        line_word = "item"
    else:
        lines = text.splitlines()
        if cut and not text.endswith("\n"):
            lines = lines[:-1]
        rows, line_word = [], "line"
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({err.msg}); each line must be one JSON object"
                ) from None
    for number, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path}: {line_word} {number} is a JSON {type(row).__name__}, expected an object")
    return rows


def _json_array_prefix(text: str) -> list[Any]:
    """The items of a JSON array that ``text``, the start of a longer file, holds whole.

    An error on the last line of ``text`` may come from an item that goes on in the file, so it ends the list
    instead; an error before it is raised.
    """
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = _WHITESPACE.match(text).end() + 1
    try:
        while True:
            pos = _WHITESPACE.match(text, pos).end()
            if not items and text[pos : pos + 1] == "]":
                return items
            item, pos = decoder.raw_decode(text, pos)
            items.append(item)
            pos = _WHITESPACE.match(text, pos).end()
            if text[pos : pos + 1] == "]":
                pos = _WHITESPACE.match(text, pos + 1).end()
                if pos < len(text):
                    raise json.JSONDecodeError("Extra data", text, pos)
                return items
            if text[pos : pos + 1] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos += 1
    except json.JSONDecodeError as err:
        if "\n" in text[err.pos :].rstrip():
            raise
        return items


def _csv_rows(path: Path, text: str, cut: bool) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError(f"data file {path} has no header line naming its columns")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {repeated} more than once; give every column its own name"
        )
    numbered = [(reader.line_num, row) for row in reader if row]
    if cut:
        numbered = numbered[:-1]
    rows = []
    for line_num, row in numbered:
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line_num}: {len(row)} fields, but the header has {len(header)} "
                f"({', '.join(header)}); quote fields that contain commas"
            )
        rows.append((line_num, dict(zip(header, row))))
    return rows


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "object"}[type(value)]


def _check_column_kinds(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> None:
    first_seen: dict[str, tuple[str, int]] = {}
    for number, row in rows:
        for column, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = first_seen.setdefault(column, (kind, number))
            if seen[0] != kind:
                raise DataError(
                    f"{path}: column {column!r} holds {seen[0]} on line {seen[1]} but {kind} on line {number}; "
                    f"use one kind for the whole column (e.g. all labels as text)"
                )
