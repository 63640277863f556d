"""Output that survives any terminal: cron's POSIX locale and PYTHONIOENCODING=ascii get ASCII look-alikes, never a crash."""

from __future__ import annotations

import codecs
import sys

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
