"""One run per results folder. The OS lock dies with its process, so a killed run leaves no stale lock."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import RunLockedError


@contextmanager
def results_lock(results_dir: Path, run_id: str) -> Iterator[None]:
    results_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(results_dir / ".ragsweep.lock")
    holder = results_dir / ".ragsweep.lock.json"  # who holds it, for the message; not the lock itself
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLockedError(
            f"another ragsweep run is using {results_dir} ({_describe(holder)}) — wait for it, or pass another --results-dir"
        ) from None
    try:
        holder.write_text(json.dumps({"run_id": run_id, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _describe(holder: Path) -> str:
    try:
        info = json.loads(holder.read_text())
        return f"run {info['run_id']}, pid {info['pid']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
