"""Load once, use for all of a stage's work, unload, and verify that memory came back.

Every stage goes through `resident_model`, so the ledger has the same snapshots per model
(before_load, loaded, before_unload, after_unload, and `sample` rows every memory_sample_s from the
start of the load until the unload is verified) and events.jsonl the same model_load /
model_unload / unload_verified sequence.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace

from .backends.base import Backend, EmbeddingOptions, GenerationOptions, LoadedModel, ModelInfo
from .errors import MemoryNotReleasedError, ModelCallError, ModelUnavailableError
from .events import Event
from .memory import MemorySampler, ensure_clean_gpu_state
from .nvml import device_used_bytes
from .runlog import RunLog


def clean_state(backend: Backend, runlog: RunLog, stage: str, back_to_bytes: int | None = None, model: str | None = None) -> bool:
    """Unload leftovers (logging each one) and wait for memory; False (and an event) if it never came back.

    A timeout is recorded, not raised: the night goes on, and an out-of-memory answer on the next
    load is handled where it happens.
    """
    try:
        ensure_clean_gpu_state(
            backend,
            runlog.platform,
            on_unload=lambda name: runlog.event(Event.MODEL_UNLOAD, stage, name, reason="leftover"),
            back_to_bytes=back_to_bytes,
        )
        return True
    except MemoryNotReleasedError as error:
        runlog.event(Event.MEMORY_NOT_RELEASED, stage, model, message=str(error))
        return False


RECOVERABLE = {"timeout", "runner_crash", "out_of_memory"}  # worth one reload and one more try
DEGRADED = {"num_ctx halved", "half the layers on the GPU", "fp16 weights", "on the CPU"}  # not what the config asked for


class Resident:
    """The loaded model of a stage. Loading climbs the out-of-memory ladder; `call` recovers once from a crash, hang or OOM."""

    def __init__(self, backend: Backend, info: ModelInfo, stage: str, runlog: RunLog, options: GenerationOptions | None):
        self._backend, self.info, self._stage, self._log = backend, info, stage, runlog
        self.options = options
        self.degraded = False  # loaded with less context or fewer GPU layers than configured
        self._reloading = threading.Lock()  # calls run on several threads at once; one of them reloads
        self._loads = 0  # bumped by each reload: a call that failed on a model another call already replaced just tries again
        self.model = self._load()

    def _load(self, start: str = "as configured", **reason) -> LoadedModel:
        """Load; on out of memory climb the ladder: clean up and retry; then for an LLM halve num_ctx and put half the
        layers on the GPU, for an embedding model on a card load fp16 weights, then move it to the CPU."""
        last: ModelCallError | None = None
        for step, options in self._ladder(start):
            if step != "as configured":
                clean_state(self._backend, self._log, self._stage)
            try:
                model = self._backend.load(self.info, options)
            except ModelCallError as error:
                if error.cause != "out_of_memory":
                    raise ModelUnavailableError(f"could not load {self.info.name}: {error}", cause=error.cause) from None
                self._log.event(Event.OUT_OF_MEMORY, self._stage, self.info.name, step=step, message=str(error))
                last = error
                continue
            self.options, self.degraded = options, step in DEGRADED
            extra = {"recovered_by": step, **_placement(options)} if step != "as configured" else {}
            self._log.event(
                Event.MODEL_LOAD,
                self._stage,
                self.info.name,
                load_s=round(model.load_seconds, 3),
                digest=self.info.digest[:12],
                **reason,
                **extra,
            )
            return model
        tried = (
            "num_ctx halved and half its layers on the GPU" if isinstance(self.options, GenerationOptions) else "every step of the ladder"
        )
        raise ModelUnavailableError(
            f"{self.info.name} does not fit in memory, even with {tried} ({last})",
            cause="out_of_memory",
        )

    def _ladder(self, start: str = "as configured"):
        """The steps of the out-of-memory ladder, from `start` on: each is (name, options)."""
        steps = [("as configured", self.options), ("after clean-up", self.options)]
        if isinstance(self.options, GenerationOptions):  # generation models: less context, then partial offload
            smaller = replace(self.options, num_ctx=max(512, self.options.num_ctx // 2))
            blocks = self.info.details.get("block_count") or 0
            steps += [("num_ctx halved", smaller), ("half the layers on the GPU", replace(smaller, num_gpu=blocks // 2))]
        elif self._backend.embedding_fallbacks:  # embedding models on a card: half precision, then the CPU
            steps += [("fp16 weights", EmbeddingOptions(half_precision=True)), ("on the CPU", EmbeddingOptions(on_cpu=True))]
        names = [name for name, _ in steps]
        yield from steps[names.index(start) :]

    def call(self, method: str, *args):
        """One model call; a crash or hang gets one reload and one more try, an LLM out of memory one reload with less context.

        An embedding model out of memory mid-call is left to the caller: a smaller batch is the cure, not a reload.
        With requests in flight on several threads, the first failure reloads and the others just try again.
        """
        loads = self._loads
        try:
            return getattr(self.model, method)(*args)
        except ModelCallError as error:
            out_of_memory = error.cause == "out_of_memory"
            if error.cause not in RECOVERABLE or (out_of_memory and not isinstance(self.options, GenerationOptions)):
                raise
            with self._reloading:
                if self._loads == loads:
                    self._log.event(Event.RECOVERING, self._stage, self.info.name, cause=error.cause, message=str(error))
                    self.reload(start="num_ctx halved" if out_of_memory else "as configured")
            return getattr(self.model, method)(*args)

    def reload(self, start: str = "as configured") -> None:
        """Replace a crashed or hung model: unload it, wait until its runner and memory are gone, load again from `start`."""
        self.close()
        clean_state(self._backend, self._log, self._stage, model=self.info.name)
        self.model = self._load(start, reason="reload after failure")
        self._loads += 1

    def close(self) -> None:
        self.model.close()
        self._log.event(Event.MODEL_UNLOAD, self._stage, self.info.name)


def _placement(options: GenerationOptions | EmbeddingOptions | None) -> dict:
    """What a ladder step changed, for its event: context and GPU layers, or precision and device."""
    if isinstance(options, GenerationOptions):
        return {"num_ctx": options.num_ctx, "num_gpu": options.num_gpu}
    return asdict(options) if options else {}


@contextmanager
def resident_model(
    backend: Backend, info: ModelInfo, stage: str, runlog: RunLog, options: GenerationOptions | None = None
) -> Iterator[Resident]:
    clean_state(backend, runlog, stage)
    before = runlog.snapshot(stage, "before_load", backend, info.name)
    # sampled from the moment the load begins until the unload is verified: on a GPU the peak often comes during the load
    sampler = MemorySampler(backend, runlog.platform, stage, info.name, before, runlog.sample_interval_s)
    resident, verified = None, False
    try:
        with sampler:
            resident = Resident(backend, info, stage, runlog, options)
            runlog.snapshot(stage, "loaded", backend, info.name, before=before)
            try:
                yield resident
            finally:
                runlog.snapshot(stage, "before_unload", backend, info.name, before=before)
                resident.close()
                verified = clean_state(backend, runlog, stage, back_to_bytes=before.device_max_used_bytes, model=info.name)
    finally:
        runlog.add_snapshots(sampler.samples)  # a load that failed keeps its samples too
        if resident is not None:
            after = runlog.snapshot(stage, "after_unload", backend, info.name)
            if verified:
                runlog.event(Event.UNLOAD_VERIFIED, stage, info.name, in_use_bytes=after.in_use_bytes)


def relieve_pressure(backend: Backend, runlog: RunLog, stage: str, keep: str, size: int) -> int:
    """Before a batch: above the pressure threshold, unload every other model and halve the batch (for the rest of the stage)."""
    used = device_used_bytes()
    threshold = runlog.platform.pressure_threshold_bytes
    if used is None or used <= threshold or size <= 1:
        return size
    for info in backend.loaded():
        if info.name.split(":")[0] != keep.split(":")[0] and not info.stopping:
            backend.unload(info.name)
            runlog.event(Event.MODEL_UNLOAD, stage, info.name, reason="memory pressure")
    runlog.event(Event.MEMORY_PRESSURE, stage, keep, used_bytes=used, threshold_bytes=threshold, batch_size=size, new_batch_size=size // 2)
    return size // 2
