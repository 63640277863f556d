"""The corpus and the questions: read streaming, validated with the line that is wrong.

Corpus rows: {"id", "title", "text"}. Question rows: {"id", "question", "reference",
"reference_context_ids": [corpus ids]}. JSONL is read line by line; CSV and Parquet go through
`datasets` (a list column in CSV is written as JSON, e.g. ["doc-1","doc-2"]).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, MissingPackageError


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    reference: str
    reference_context_ids: tuple[str, ...]


CORPUS_FIELDS = {"id": str, "title": str, "text": str}
QUESTION_FIELDS = {"id": str, "question": str, "reference": str, "reference_context_ids": list}


def load_corpus(path: Path) -> list[Document]:
    documents: list[Document] = []
    seen: set[str] = set()
    for where, row in _rows(path):
        _check_fields(row, CORPUS_FIELDS, where, optional={"title"})
        if row["id"] in seen:
            raise InputError(f"{where}: duplicate corpus id {row['id']!r}")
        seen.add(row["id"])
        documents.append(Document(id=row["id"], title=row.get("title") or "", text=row["text"]))
    if not documents:
        raise InputError(f"{path}: the corpus is empty")
    return documents


def load_questions(path: Path, corpus_ids: set[str], limit: int | None = None) -> list[Question]:
    """All questions validated (so a bad line is found before hours of work), then the first `limit`."""
    questions: list[Question] = []
    seen: set[str] = set()
    for where, row in _rows(path):
        _check_fields(row, QUESTION_FIELDS, where)
        if row["id"] in seen:
            raise InputError(f"{where}: duplicate question id {row['id']!r}")
        seen.add(row["id"])
        ids = row["reference_context_ids"]
        if not ids or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{where}: field 'reference_context_ids' must be a non-empty list of corpus ids")
        dangling = [i for i in ids if i not in corpus_ids]
        if dangling:
            raise InputError(f"{where}: field 'reference_context_ids' names {dangling[0]!r}, which is not in the corpus")
        questions.append(Question(row["id"], row["question"], row["reference"], tuple(ids)))
    if not questions:
        raise InputError(f"{path}: the test set is empty")
    return questions[:limit] if limit else questions


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) pairs; location is 'file:line' for JSONL, 'file: row N' otherwise."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        yield from _jsonl_rows(path)
    elif suffix in {".csv", ".parquet"}:
        yield from _table_rows(path, suffix.lstrip("."))
    else:
        raise InputError(f"{path}: unsupported format {suffix!r} — use .jsonl, .csv or .parquet")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _table_rows(path: Path, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise MissingPackageError(f"reading {path.name}", "datasets==5.2.0") from None
    datasets.disable_progress_bars()
    table = datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True)
    # CSV rows start at line 2 (line 1 is the header); Parquet rows are counted from 1.
    offset = 2 if kind == "csv" else 1
    for index, row in enumerate(table):
        row = dict(row)
        ids = row.get("reference_context_ids")
        if isinstance(ids, str):
            row["reference_context_ids"] = _parse_id_list(ids, f"{path}:{index + offset}")
        where = f"{path}:{index + offset}" if kind == "csv" else f"{path}: row {index + offset}"
        yield where, row


def _parse_id_list(text: str, where: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [part.strip() for part in text.split("|") if part.strip()]
    return value if isinstance(value, list) else [str(value)]


def _check_fields(row: dict[str, Any], fields: dict[str, type], where: str, optional: set[str] = frozenset()) -> None:
    for name, kind in fields.items():
        if name not in row or row[name] is None:
            if name in optional:
                continue
            raise InputError(f"{where}: missing field '{name}'")
        if not isinstance(row[name], kind):
            raise InputError(f"{where}: field '{name}' must be {kind.__name__}, got {type(row[name]).__name__}")
        if kind is str and name != "title" and not row[name].strip():
            raise InputError(f"{where}: field '{name}' is empty")
