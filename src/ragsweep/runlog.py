"""The run's journal: events and memory snapshots, into the store and (live) into events.jsonl."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .events import EVENTS_SCHEMA_VERSION, Event
from .memory import MemorySnapshot, infer_attribution, monitor_gpu_memory
from .platform import PlatformConfig
from .redact import redact_all
from .store import Store

log = logging.getLogger("ragsweep")


class RunLog:
    def __init__(self, run_id: str, run_dir: Path, store: Store, platform: PlatformConfig, sample_interval_s: float = 1.0):
        self.run_id = run_id
        self.run_dir = run_dir
        self.store = store
        self.platform = platform
        self.sample_interval_s = sample_interval_s  # how often the memory sampler reads while a model is resident
        self.box = socket.gethostname()  # events and snapshots say which machine they happened on (a cluster box says its own)
        self._seq = 0
        self._lock = threading.Lock()  # events come from generation threads and the judge's thread too
        self._events_file = (run_dir / "events.jsonl").open("a", encoding="utf-8")

    def event(self, event: Event, stage: str | None = None, model: str | None = None, **data: Any) -> None:
        """One line of events.jsonl and one row of the store (fields: ragsweep.events)."""
        record = {
            "schema_version": EVENTS_SCHEMA_VERSION,
            "event": str(Event(event)),
            "stage": stage,
            "model": model,
            "t": round(time.time(), 3),
            "box": data.pop("box", self.box),
            **redact_all(data),  # a message may quote a URL with its password
        }
        with self._lock:
            self._seq += 1
            self.store.add_event(self.run_id, self._seq, record)
            self._events_file.write(json.dumps(record) + "\n")
            self._events_file.flush()  # tail -f friendly; survives a crash
        log.info("%s %s %s %s", event, stage or "", model or "", {k: v for k, v in record.items() if k in data} or "")

    def snapshot(self, stage: str, label: str, backend, model: str | None = None, before: MemorySnapshot | None = None) -> MemorySnapshot:
        """One ledger row; with `before` (the level before the load), a container's missing pids are inferred."""
        snapshot = monitor_gpu_memory(stage, label, backend, self.platform, model)
        if before is not None:
            infer_attribution(snapshot, before)
        self.add_snapshots([snapshot])
        return snapshot

    def add_snapshots(self, snapshots: list[MemorySnapshot]) -> None:
        self.add_snapshot_rows([{**row, "box": row["box"] or self.box} for row in (snapshot.row() for snapshot in snapshots)])

    def add_snapshot_rows(self, rows) -> None:
        """Ledger rows as they are (a cluster box's, which carry its name)."""
        with self._lock:
            for row in rows:
                self._seq += 1
                self.store.add_snapshot(self.run_id, self._seq, row)

    def close(self) -> None:
        self._events_file.close()
