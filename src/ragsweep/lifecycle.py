"""Load once, use for all of a stage's work, unload, and verify that memory came back.

Every stage goes through `resident_model`, so the ledger has the same three snapshots per model
(before_load, loaded, after_unload) and events.jsonl the same load/unload pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .backends.base import Backend, GenerationOptions, LoadedModel, ModelInfo
from .errors import MemoryNotReleasedError
from .memory import ensure_clean_gpu_state
from .runlog import RunLog


def clean_state(backend: Backend, runlog: RunLog, stage: str, back_to_bytes: int | None = None, model: str | None = None) -> bool:
    """Unload leftovers (logging each one) and wait for memory; False (and an event) if it never came back.

    A timeout is recorded, not raised: the night goes on, and an out-of-memory answer on the next
    load is handled where it happens.
    """
    try:
        ensure_clean_gpu_state(backend, runlog.platform, on_unload=lambda name: runlog.event("model_unload", stage, name, reason="leftover"), back_to_bytes=back_to_bytes)
        return True
    except MemoryNotReleasedError as error:
        runlog.event("memory_not_released", stage, model, message=str(error))
        return False


class Resident:
    """The loaded model of a stage; `reload()` replaces a crashed or hung one."""

    def __init__(self, backend: Backend, info: ModelInfo, stage: str, runlog: RunLog, options: GenerationOptions | None):
        self._backend, self.info, self._stage, self._log, self._options = backend, info, stage, runlog, options
        self.model = self._load()

    def _load(self, **reason) -> LoadedModel:
        model = self._backend.load(self.info, self._options)
        self._log.event("model_load", self._stage, self.info.name, load_s=round(model.load_seconds, 3), digest=self.info.digest[:12], **reason)
        return model

    def reload(self) -> None:
        self.close()
        self.model = self._load(reason="reload after failure")

    def close(self) -> None:
        self.model.close()
        self._log.event("model_unload", self._stage, self.info.name)


@contextmanager
def resident_model(backend: Backend, info: ModelInfo, stage: str, runlog: RunLog, options: GenerationOptions | None = None) -> Iterator[Resident]:
    clean_state(backend, runlog, stage)
    before = runlog.snapshot(stage, "before_load", backend, info.name)
    resident = Resident(backend, info, stage, runlog, options)
    runlog.snapshot(stage, "loaded", backend, info.name)
    try:
        yield resident
    finally:
        runlog.snapshot(stage, "before_unload", backend, info.name)
        resident.close()
        verified = clean_state(backend, runlog, stage, back_to_bytes=before.device_used_bytes, model=info.name)
        after = runlog.snapshot(stage, "after_unload", backend, info.name)
        if verified:
            runlog.event("unload_verified", stage, info.name, in_use_bytes=after.in_use_bytes)
