"""Tables for people: CSV safe to open in a spreadsheet, Markdown safe to render."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .fmt import is_nan

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so (OWASP: CSV injection)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)


def _csv_cell(value: Any) -> Any:
    """Empty for absent and NaN; text that a spreadsheet would run as a formula gets a leading quote (the store keeps it raw)."""
    if value is None or is_nan(value):
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; a '|' inside a cell (a model path, a question) is escaped so it cannot split the cell."""
    head = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return head + ["| " + " | ".join(md_cell(cell) for cell in row) + " |" for row in rows]


def md_cell(text: Any) -> str:
    """User text in Markdown: a '|' would split a table cell, and '<' would start HTML in every viewer that renders it."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
