"""Output that survives any terminal: cron's POSIX locale and PYTHONIOENCODING=ascii get ASCII look-alikes, never a crash."""

from __future__ import annotations

import codecs
import re
import sys

from rich.text import Text

ERRORS = "ragsweep-ascii"
LOOKALIKES = {"×": "x", "—": "-", "–": "-", "≈": "~", "±": "+/-", "≤": "<=", "≥": ">=", "…": "...", "→": "->", "Δ": "d", "·": "*", "★": "*"}


def _lookalike(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "".join(LOOKALIKES.get(char, "?") for char in error.object[error.start : error.end]), error.end


codecs.register_error(ERRORS, _lookalike)


def make_output_safe() -> None:
    """stdout and stderr that cannot encode the report's symbols write ASCII look-alikes instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "×—≈±".encode(stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors=ERRORS)


# C0 and C1 control characters and whole escape sequences (colours, cursor moves, window titles), but not tab or newline
_CONTROLS = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def without_controls(text: str) -> str:
    """A user's text (a model name, a path, an error) bound for a terminal: no escape sequence of it reaches the screen."""
    return _CONTROLS.sub("", text)


def plain(value: object) -> Text:
    """A user's value in a rich table or line: shown as text, never read as markup ('[bold]x' stays '[bold]x')."""
    return Text(without_controls(str(value)))
