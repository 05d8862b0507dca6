"""Checks of local data files before ``datasets`` reads them, so a bad line is named by file and line.

``datasets`` (through pyarrow) reports an unparseable line, a column whose values change type
(``"label": 1`` on one line, ``"label": "pos"`` on another) or an empty file with a long traceback
that names neither. :func:`check_data_file` reads the file once as text and raises
:class:`~hf_ext.errors.DataError` with the file, the line and what to fix.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .errors import DataError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv"}


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
    """Parse ``path`` (JSON lines, a JSON array of objects, or CSV with a header) and return its column names.

    Raises:
        DataError: the file is empty, a line is not a JSON object, a CSV row has the wrong number of
            fields, or a column holds values of different kinds (text on one line, a number on another).
    """
    path = Path(path)
    kind = data_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty: it holds no examples")
    rows = _csv_rows(path, text) if kind == "csv" else _json_rows(path, text)
    if not rows:
        raise DataError(f"data file {path} holds no examples")
    if kind == "json":
        _check_column_kinds(path, rows)
    return list(dict.fromkeys(column for _, row in rows for column in row))


def _json_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected an array of objects") from None
        rows = list(enumerate(items, start=1))
        line_word = "item"
    else:
        rows, line_word = [], "line"
        for number, line in enumerate(text.splitlines(), start=1):
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


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError(f"data file {path} has no header line naming its columns")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {repeated} more than once; give every column its own name"
        )
    rows = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}:{reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                f"({', '.join(header)}); quote fields that contain commas"
            )
        rows.append((reader.line_num, dict(zip(header, row))))
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
