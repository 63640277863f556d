"""Read a GGUF file's header, without llama.cpp: how many layers a model has (for 'half the layers on the GPU').

Importing llama_cpp in the parent would load its GPU backend there; the header is plain data.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (v2 and v3).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def block_count(path: Path) -> int | None:
    """The model's layer count ('<architecture>.block_count'), or None when the header does not say or is not GGUF."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != b"GGUF" or _read(handle, "<I") < 2:
                return None
            _read(handle, "<Q")  # tensor count
            found: dict[str, object] = {}
            for _ in range(_read(handle, "<Q")):
                key = _string(handle)
                value = _value(handle, _read(handle, "<I"))
                found[key] = value
                architecture = found.get("general.architecture")
                if architecture and f"{architecture}.block_count" in found:
                    return int(found[f"{architecture}.block_count"])
    except (OSError, struct.error, UnicodeDecodeError, KeyError):
        return None
    return None


def _read(handle: BinaryIO, fmt: str):
    return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]


def _string(handle: BinaryIO) -> str:
    return handle.read(_read(handle, "<Q")).decode("utf-8")


def _value(handle: BinaryIO, kind: int):
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:  # tokenizer vocabularies: read past them
        item_kind, count = _read(handle, "<I"), _read(handle, "<Q")
        if item_kind in _SCALARS:
            handle.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
        else:
            for _ in range(count):
                _value(handle, item_kind)
        return None
    return _read(handle, _SCALARS[kind])
