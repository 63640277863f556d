"""The corpus and the questions: read streaming, validated with the line that is wrong.

Corpus rows: {"id", "title", "text"}. Question rows: {"id", "question", "reference",
"reference_context_ids": [corpus ids]}. JSONL is read line by line; CSV and Parquet go through
the csv module (every cell text) and pyarrow (a list column in CSV is written as JSON, e.g.
["doc-1","doc-2"], or as doc-1|doc-2). Files must be UTF-8; a BOM is fine.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .fmt import shown


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
    for where, row in read_rows(path):
        check_fields(row, CORPUS_FIELDS, where, optional={"title"})
        if row["id"] in seen:
            raise InputError(f"{where}: duplicate corpus id {shown(row['id'])}")
        seen.add(row["id"])
        documents.append(Document(id=row["id"], title=row.get("title") or "", text=row["text"]))
    if not documents:
        raise InputError(f"{path}: the corpus is empty")
    return documents


def load_questions(path: Path, corpus_ids: set[str], limit: int | None = None) -> list[Question]:
    """All questions validated (so a bad line is found before hours of work), then the first `limit`."""
    questions: list[Question] = []
    seen: set[str] = set()
    for where, row in read_rows(path):
        check_fields(row, QUESTION_FIELDS, where)
        if row["id"] in seen:
            raise InputError(f"{where}: duplicate question id {shown(row['id'])}")
        seen.add(row["id"])
        ids = row["reference_context_ids"]
        if not ids or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{where}: field 'reference_context_ids' must be a non-empty list of corpus ids")
        dangling = [i for i in ids if i not in corpus_ids]
        if dangling:
            raise InputError(f"{where}: field 'reference_context_ids' names {shown(dangling[0])}, which is not in the corpus")
        questions.append(Question(row["id"], row["question"], row["reference"], tuple(ids)))
    if not questions:
        raise InputError(f"{path}: the test set is empty")
    return questions[:limit] if limit else questions


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) pairs; location is 'file:line' for JSONL, 'file: row N' otherwise. A file the OS will not let us
    read is one line too."""
    try:
        yield from _rows_by_format(path)
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror or error}) — check that it is a file you may read") from None


def _rows_by_format(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _json_rows(path)
    elif suffix in {".csv", ".tsv"}:
        yield from _csv_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        raise InputError(f"{path}: unsupported format {shown(suffix)} — use .jsonl, .json, .csv, .tsv or .parquet")


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file (a leading BOM is fine); a byte that is not UTF-8 is an error naming line and column."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(
                    f"{path}:{number}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}) — save it as UTF-8"
                ) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line.rstrip("\r\n"))  # without its line ending, an error at the end of a line is placed there
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: invalid JSON at column {error.colno}: {error.msg}") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to be a test-set row") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A JSON array of objects, or JSON Lines under a .json name (what `datasets.Dataset.to_json` writes)."""
    text = "".join(line for _, line in utf8_lines(path))
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(path)
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: invalid JSON at column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a test set") from None
    for index, row in enumerate(items, start=1):
        where = f"{path}: item {index}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every CSV cell is text, as written: an id like 007 or a title like 1984 stays a string. The separator is the one
    of comma, semicolon and tab that the header uses most (a spreadsheet in many locales saves with semicolons)."""
    lines = (text for _, text in utf8_lines(path))
    header = next(lines, "")
    delimiter = max(",;\t", key=header.count)  # ties go to the comma: a one-column header is never a valid file anyway
    csv.field_size_limit(CSV_FIELD_LIMIT)  # the module's default (131,072 characters) is shorter than many a document
    rows = csv.DictReader(itertools.chain([header], lines), delimiter=delimiter)
    for index, row in enumerate(_csv_checked(rows, path), start=2):  # line 1: the header
        where = f"{path}:{index}"
        if None in row:
            raise InputError(f"{where}: more cells than the header has columns")
        yield where, _with_id_list({key: (value if value != "" else None) for key, value in row.items()}, where)


CSV_FIELD_LIMIT = 2**31 - 1


def _csv_checked(rows: csv.DictReader, path: Path) -> Iterator[dict[str, Any]]:
    """The reader's rows; what the csv module cannot parse is a one-line error at the line it reached."""
    while True:
        try:
            yield next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise InputError(f"{path}:{rows.line_num}: not valid CSV ({error})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parquet through pyarrow; whole-number ids are read as their text (1984 -> "1984")."""
    import pyarrow
    import pyarrow.parquet

    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as error:
        raise InputError(
            f"{path}: not a readable Parquet file ({str(error).splitlines()[0]}) — write it with pandas/pyarrow, or use .jsonl"
        ) from None
    for index, row in enumerate(rows, start=1):
        where = f"{path}: row {index}"
        row = _with_id_list(row, where)
        row["id"] = _whole_number_as_text(row.get("id"))
        if isinstance(row.get("reference_context_ids"), list):
            row["reference_context_ids"] = [_whole_number_as_text(i) for i in row["reference_context_ids"]]
        yield where, row


def _whole_number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _with_id_list(row: dict[str, Any], where: str) -> dict[str, Any]:
    """reference_context_ids may be written as a JSON list or 'a|b' in one text cell."""
    ids = row.get("reference_context_ids")
    if isinstance(ids, str):
        row["reference_context_ids"] = _parse_id_list(ids, where)
    return row


def _parse_id_list(text: str, where: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [part.strip() for part in text.split("|") if part.strip()]
    return [_whole_number_as_text(v) for v in value] if isinstance(value, list) else [str(value)]


def check_fields(row: dict[str, Any], fields: dict[str, type], where: str, optional: set[str] = frozenset()) -> None:
    for name, kind in fields.items():
        if name not in row or row[name] is None:
            if name in optional:
                continue
            raise InputError(f"{where}: missing field '{name}'")
        if not isinstance(row[name], kind):
            raise InputError(f"{where}: field '{name}' must be {kind.__name__}, got {type(row[name]).__name__}")
        if kind is str and name != "title" and not row[name].strip():
            raise InputError(f"{where}: field '{name}' is empty")
        for text in row[name] if kind is list else [row[name]]:
            _check_encodable(text, name, where)


def _check_encodable(value: Any, name: str, where: str) -> None:
    """A JSON escape like \\ud800 (half of a UTF-16 pair) decodes to text no UTF-8 file or database can hold:
    refused here, before the run stores a thing, not as a traceback when the store meets it."""
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"{where}: field '{name}' holds a lone UTF-16 surrogate (\\u{ord(value[error.start]):04x}) at character {error.start + 1} "
            "— write the character itself, or both halves of its escape pair"
        ) from None
