"""A GPU box's side of a cluster run: a Dask worker that runs one model stage at a time, as on a single machine.

`python src/benchmark.py worker tcp://HEAD:8786 --name box-a` starts it: one thread, resource
gpu=N, this box's own Ollama (or the local backend). A stage task loads its model once, streams
every result, event and memory snapshot to the head, unloads and verifies, and never opens the
head's database.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, get_backend
from .backends.base import GenerationOptions, ModelInfo, Prompt
from .config import Settings, scheduler_address
from .errors import BackendUnavailableError, ConfigError, ModelCallError, RagsweepError
from .events import Event
from .inflight import answer_concurrently, in_flight_limit
from .lifecycle import resident_model
from .memory import MemorySnapshot
from .platform import Budget, get_platform_config
from .retrieval import embed_in_batches
from .runlog import RunLog

ENV = {"name": "RAGSWEEP_WORKER_NAME", "backend": "RAGSWEEP_WORKER_BACKEND", "ollama_host": "RAGSWEEP_WORKER_OLLAMA_HOST"}
PACKAGES = ("numpy", "torch", "sentence-transformers", "llama-cpp-python", "httpx", "pydantic")  # must match the head's


def serve(args) -> int:
    """The `worker` subcommand: a Dask worker with one thread and `--gpus` gpu slots, until the scheduler goes away."""
    import dask
    from distributed import Worker

    from .cluster import security

    try:
        args.scheduler = scheduler_address(args.scheduler)
    except ValueError as error:
        raise ConfigError(f"worker: {args.scheduler!r} is {error}") from None
    dask.config.set({"distributed.diagnostics.nvml": False})  # ragsweep reads NVML itself; Dask's monitor would poll it for a dashboard
    for key, value in (("name", args.name), ("backend", args.backend), ("ollama_host", args.ollama_host)):
        if value:
            os.environ[ENV[key]] = value  # the stage tasks run in this process: they read this box's settings here
    tls = security(args.scheduler, args.tls_ca_file, args.tls_cert, args.tls_key, where="--tls-ca-file, --tls-cert and --tls-key")
    tunnel = {"host": "127.0.0.1", "port": args.port, "contact_address": f"tcp://127.0.0.1:{args.port}"} if args.port else {}

    async def run() -> None:
        worker = Worker(args.scheduler, nthreads=1, resources={"gpu": args.gpus}, name=args.name, security=tls, dashboard=False, **tunnel)
        try:
            await asyncio.wait_for(worker.start(), timeout=args.connect_timeout)  # Dask would retry an absent scheduler forever
        except TimeoutError:
            await worker.close()
            raise TimeoutError(f"no scheduler answered within {args.connect_timeout} s") from None
        async with worker:
            await worker.finished()

    try:
        asyncio.run(run())
    except (OSError, RuntimeError, TimeoutError) as error:  # the scheduler is not there, or went away
        raise BackendUnavailableError(
            f"box {args.name}: cannot serve the Dask scheduler at {args.scheduler} ({error}) — start `dask scheduler` on the head, "
            "or check the SSH tunnel"
        ) from None
    return 0


def box_name() -> str:
    return os.environ.get(ENV["name"]) or socket.gethostname()


def box_settings(head: dict[str, Any]) -> Settings:
    """The head's settings, with this box's backend and Ollama (--ollama-host, else OLLAMA_HOST, else localhost)."""
    host = os.environ.get(ENV["ollama_host"]) or os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
    values = {**head, "backend": os.environ.get(ENV["backend"]) or head["backend"], "ollama_host": host, "cluster": None}
    return Settings.model_validate(values)


def identity() -> dict[str, str]:
    """What must be the same on every box and the head: ragsweep's own sources, and the model libraries."""
    sources = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        sources.update(path.read_bytes())
    found = {"box": box_name(), "ragsweep": sources.hexdigest()[:16]}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def version_difference(head: dict[str, str], box: dict[str, str]) -> str | None:
    """The first package whose version differs between the head and a box, in words; None when they match."""
    for package, wanted in head.items():
        if package != "box" and box.get(package) != wanted:
            return (
                f"box {box.get('box')} has {package} {box.get(package)}, the head has {wanted} — install the same "
                "checkout and requirements on every box"
            )
    return None


def facts(head_backend: str) -> dict[str, Any]:
    """What the head's plan shows of this box, and the memory budget that decides where a model out of memory may go next."""
    platform = get_platform_config()
    return {
        "memory_gb": platform.memory_total_bytes * platform.device_count / 1e9,
        "device": platform.device,
        "ragsweep": identity()["ragsweep"],
        "budget": asdict(_budget(platform, os.environ.get(ENV["backend"]) or head_backend)),
    }


def _budget(platform, backend: str) -> Budget:
    return Budget.of(platform, BACKENDS[backend].splits_across_cards)


def describe_on_box(head: dict[str, Any], name: str, kind: str) -> dict | str:
    """The model as this box's backend knows it (digest, size), or why it cannot be used here."""
    settings = box_settings(head)
    try:
        backend = get_backend(settings, get_platform_config().device)
        backend.check()
        return asdict(backend.describe(name, kind))
    except RagsweepError as error:
        return str(error)


class QueueLog(RunLog):
    """A RunLog whose events and snapshots go to the head through the stage's queue, each marked with this box."""

    def __init__(self, queue, platform, sample_interval_s: float, box: str):
        self.queue, self.platform, self.sample_interval_s, self.box = queue, platform, sample_interval_s, box

    def event(self, event: Event, stage: str | None = None, model: str | None = None, **data: Any) -> None:
        self.queue.put(("event", model, str(Event(event)), stage, {**data, "box": self.box}))

    def add_snapshots(self, snapshots: list[MemorySnapshot]) -> None:
        if snapshots:
            self.queue.put(("snapshot", None, *[{**snapshot.row(), "box": self.box} for snapshot in snapshots]))

    def close(self) -> None:
        pass


def run_stage_on_box(job: dict[str, Any]) -> dict[str, Any]:
    """A Dask task: one model's stage on this box (gpu=1), skipping what the head already has (a rescheduled or moved task).

    A model that cannot do its stage here (out of memory even after the ladder, say) is a result, not a task error:
    the head reads where it failed and how big this box is, and may move the rest to a box with more memory.
    """
    from distributed import Event as DaskEvent
    from distributed import Queue, Variable

    if difference := version_difference(job["head"], identity()):  # joined after the head checked every box
        return {"box": box_name(), "failed": {"cause": "version_mismatch", "message": difference}}
    settings = box_settings(job["settings"])
    platform = get_platform_config(**settings.platform_overrides())
    backend = get_backend(settings, platform.device)
    queue, stop = Queue(job["queue"]), DaskEvent(job["stop"])
    have = set(Variable(job["done"]).get() or [])
    log = QueueLog(queue, platform, settings.memory_sample_s, box_name())
    backend.on_retry = lambda cause, message, attempt: log.event(Event.RETRY, job["stage"], cause=cause, attempt=attempt, message=message)
    info = ModelInfo(**job["info"])
    ran = {"box": box_name(), "capacity_bytes": _budget(platform, settings.backend).capacity_bytes}
    try:
        if job["kind"] == "embed":
            return {**ran, "done": _embed(job, backend, log, info, queue, stop, have)}
        return {**ran, "done": _answer(job, backend, log, info, queue, stop, have)}
    except (ModelCallError, BackendUnavailableError) as error:
        return {**ran, "failed": {"cause": getattr(error, "cause", "unavailable"), "message": str(error)}}


def _embed(job, backend, log, info: ModelInfo, queue, stop, have: set[str]) -> int:
    texts = {h: text for h, text in job["texts"].items() if h not in have}

    def send(hashes: list[str], vectors: np.ndarray, seconds: float) -> None:
        queue.put(
            (
                "vectors",
                info.name,
                info.digest,
                [(h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in zip(hashes, vectors, strict=True)],
            )
        )

    with resident_model(backend, info, job["stage"], log) as resident:
        embed_in_batches(resident, backend, log, job["stage"], texts, job["batch_size"], send, should_stop=stop.is_set)
    return len(texts)


def _answer(job, backend, log, info: ModelInfo, queue, stop, have: set[str]) -> int:
    prompts = {key: Prompt(**prompt) for key, prompt in job["prompts"].items() if key not in have}
    options = GenerationOptions(**{**job["options"], "stop": tuple(job["options"]["stop"])})
    limit = in_flight_limit(backend, job.get("generation_concurrency"))
    with resident_model(backend, info, job["stage"], log, options) as resident:
        call = lambda prompt: resident.call("generate", prompt)  # noqa: E731
        for key, outcome in answer_concurrently(call, prompts, limit, should_stop=stop.is_set):  # stop: the head was interrupted
            if isinstance(outcome, ModelCallError):
                queue.put(("failed", info.name, key, outcome.cause, str(outcome)))
                continue
            answer = {
                "text": outcome.text,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "seconds": outcome.seconds,
            }
            queue.put(("answer", info.name, key, info.digest, answer, resident.degraded or outcome.prompt_cut))  # neither is cached
    return len(prompts)
