"""Secrets never reach logs, results or the screen: URLs lose their password and their key/token parameters.

The real value is still what connects (httpx, LiteLLM); only what is stored, logged or printed
goes through here. `redact` works on any text, so an error message that quotes a URL is safe too.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# userinfo after a scheme, up to the last '@' of the address (a password may hold '@' or '/', written raw); a bare
# 'user:password@host' too (OLLAMA_HOST is often written without a scheme). A user with no password may be a token.
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@(?=[^\s'\"<>@]+)"
    r"|(?<![\w/@.:-])(?P<user>[\w.~%+-]+):(?P<password>[^\s'\"<>]+)@(?=[\w.-]+(?::\d+)?(?:[/\s'\"]|$))"
)
_SECRET_PARAMS = re.compile(r"(?P<name>[?&;](?:api[_-]?key|key|token|access[_-]?token|password|secret)=)(?P<value>[^&#\s'\"]*)", re.I)


def redact(text: str) -> str:
    """'http://admin:PASSWORD@host:11434/?token=T' -> 'http://admin:***@host:11434/?token=***'; 'admin:PASSWORD@host' ->
    'admin:***@host'; 'https://TOKEN@host' -> 'https://***@host'."""
    text = _USERINFO.sub(_masked, text)
    return _SECRET_PARAMS.sub(lambda m: f"{m['name']}{MASK}", text)


def _masked(match: re.Match) -> str:
    if match["scheme"] is None:
        return f"{match['user']}:{MASK}@"
    user, colon, _ = match["userinfo"].partition(":")
    shown = f"{user}:{MASK}" if colon and user and "/" not in user else MASK  # a lone user part may be the token itself
    return f"{match['scheme']}{shown}@"


def redact_all(value: Any) -> Any:
    """The same, through the strings of a JSON-like value (dicts, lists): for records that are stored or printed."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(item) for item in value]
    return value
