"""How numbers read in tables and lines: one place, so the screen, report.md and report.html agree."""

from __future__ import annotations

import math
import reprlib
from typing import Any

_SHORT = reprlib.Repr()  # a hostile value (a 10 MB id, a YAML alias bomb) stays a short line, and is never expanded whole
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 80, 80, 2, 4, 4


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def shown(value: Any) -> str:
    """The repr of a value a user gave, as an error quotes it: at most about 80 characters, nesting cut at 2 levels."""
    return _SHORT.repr(value)


def number(value: Any, digits: int = 3) -> str:
    """'-' for absent, 'NaN' for a failed score, else fixed decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def interval(row: dict[str, Any], column: str, digits: int = 3) -> str:
    """A summary cell: '0.33 [0.16, 0.52]', or '0.33 (too few questions)' below the interval's minimum n."""
    mean, low, high = row.get(column), row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if mean is None or is_nan(mean) or low is None:
        return number(mean, digits)
    if is_nan(low):
        return f"{number(mean, digits)} (too few questions)"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def estimate(value, signed: bool = False) -> str:
    """A stats.Interval: '0.33 [0.16, 0.52]', '0.33 (too few questions)', or '-' when absent."""
    if value is None or is_nan(value.mean):
        return "-"
    sign = "+" if signed else ""
    if is_nan(value.low):
        return f"{value.mean:{sign}.3f} (too few questions)"
    return f"{value.mean:{sign}.3f} [{value.low:{sign}.3f}, {value.high:{sign}.3f}]"


def plus_minus(row: dict[str, Any], column: str, digits: int = 2) -> str:
    """A compact cell for the screen: '0.33±0.18' (half the interval's width), or just the mean."""
    mean, low, high = row.get(column), row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if mean is None or is_nan(mean) or low is None or is_nan(low):
        return number(mean, digits)
    return f"{mean:.{digits}f}±{(high - low) / 2:.{digits}f}"


def gb(size: int | float | None) -> str:
    """Bytes as decimal GB with two decimals; '-' when unknown."""
    return "-" if size is None else f"{size / 1e9:.2f}"


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
