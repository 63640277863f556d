"""Several GPU boxes, one sweep, on Dask distributed: each model stage is one task on one box (resource gpu=1).

The head (this process) keeps the store as the only writer. It sends each box only the work the
caches lack; a box runs the stage under the same memory discipline as a single machine (clean
state, load once, unload, verify) and streams every vector batch, answer, event and memory snapshot
back through a Dask Queue as it is made, so a lost box loses at most what was in flight. With the
caches filled, the head's own stages run exactly as without a cluster, from the caches.
A task that is rescheduled after its box died skips what the head already has (a Dask Variable).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from .backends import get_backend
from .backends.base import Backend, LoadedInfo, LoadedModel, ModelInfo
from .errors import BackendUnavailableError, ConfigError, ModelCallError
from .events import Event
from .generation import pending_answers
from .retrieval import missing_texts
from .retrievers import needs_model
from .run import RunContext
from .testset import Question

DRAIN_S = 0.2  # how long the head waits on the queue before it looks at the tasks again


class ClusterBackend(Backend):
    """The head's view of the boxes: models are described on the boxes and loaded only there, never here."""

    name = "cluster"
    runs_locally = False

    def __init__(self, address: str, settings, device: str):
        self.address, self.settings, self.device = address, settings, device
        self.client = None
        self.boxes: dict[str, dict[str, Any]] = {}  # box name -> its slots, NVML total, versions
        self.failures: dict[str, str] = {}  # model -> why no box could run it

    @classmethod
    def from_settings(cls, settings, device: str) -> ClusterBackend:
        return cls(settings.cluster, settings, device)

    def check(self) -> None:
        from . import cluster_worker

        tls = security(self.settings.cluster_tls_ca_file, self.settings.cluster_tls_cert, self.settings.cluster_tls_key)
        self.client = connect(self.address, tls)
        self.boxes = wait_for_boxes(self.client, self.settings.cluster_wait_s)
        require_same_versions(self.client, cluster_worker.identity())

    def describe(self, name: str, kind) -> ModelInfo:
        """On every box: a model must exist everywhere, with the same digest, or results would not be comparable."""
        from .cluster_worker import describe_on_box

        found = self.client.run(describe_on_box, self.settings.public_dict(), name, kind)
        errors = {box: info for box, info in found.items() if isinstance(info, str)}
        if errors:
            box, message = next(iter(errors.items()))
            raise ConfigError(f"box {self._name(box)}: {message}")
        digests = {self._name(box): info["digest"] for box, info in found.items()}
        if len(set(digests.values())) > 1:
            raise ConfigError(
                f"model {name!r} differs between boxes ({', '.join(f'{b}: {d[:12]}' for b, d in digests.items())}) — "
                f"pull the same tag everywhere (ollama pull {name})"
            )
        return ModelInfo(**next(iter(found.values())))

    def load(self, info: ModelInfo, options=None) -> LoadedModel:
        reason = self.failures.get(info.name, "no box answered for it")
        raise ModelCallError(f"{info.name} ran on no box: {reason}", cause="cluster")

    def loaded(self) -> list[LoadedInfo]:
        return []  # the head holds no model

    def unload(self, name: str) -> None:
        pass

    def plan_notes(self, models: list[ModelInfo]) -> list[str]:
        slots = ", ".join(
            f"{name} ({box['gpus']} gpu slot{'s' * (box['gpus'] > 1)}, {box['memory_gb']:.0f} GB)" for name, box in self.boxes.items()
        )
        return [
            f"cluster {self.address}: {len(self.boxes)} box{'es' * (len(self.boxes) != 1)}: {slots}; "
            "retrieval stages run first, in parallel over the boxes, then generation stages; bm25, oracle, none and the judge run here"
        ]

    def versions(self) -> dict[str, str]:
        return {f"box {name}": box["ragsweep"] for name, box in self.boxes.items()}

    def _name(self, address: str) -> str:
        return next((name for name, box in self.boxes.items() if box["address"] == address), address)


def backend_for(settings, device: str) -> Backend:
    """The boxes of --cluster, else the backend the settings name, here."""
    return ClusterBackend.from_settings(settings, device) if settings.cluster else get_backend(settings, device)


def security(ca_file, cert, key):
    """Dask TLS for boxes that cannot tunnel (all three files, or none: plain TCP, for an SSH tunnel)."""
    if not (ca_file or cert or key):
        return None
    from distributed.security import Security

    files = {"tls_ca_file": str(ca_file), "tls_client_cert": str(cert), "tls_client_key": str(key)}
    return Security(**files, tls_worker_cert=str(cert), tls_worker_key=str(key), require_encryption=True)


def connect(address: str, tls=None):
    """A Dask client, or exit 3 within seconds when the scheduler is not there."""
    from distributed import Client

    try:
        return Client(address, timeout="10s", set_as_default=False, security=tls)
    except (OSError, TimeoutError) as error:
        raise BackendUnavailableError(
            f"no Dask scheduler at {address} ({error}) — start it with `dask scheduler`, or check the SSH tunnel / --cluster address"
        ) from None


def wait_for_boxes(client, wait_s: float) -> dict[str, dict[str, Any]]:
    """Every connected worker with a gpu slot, with what it says of itself; exit 3 when none comes within `wait_s`."""
    from . import cluster_worker

    deadline = time.monotonic() + wait_s
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        boxes = {w["name"]: {"address": address, "gpus": int(w.get("resources", {}).get("gpu", 0))} for address, w in workers.items()}
        boxes = {name: box for name, box in boxes.items() if box["gpus"] > 0}
        if boxes:
            facts = client.run(cluster_worker.facts, workers=[box["address"] for box in boxes.values()])
            for box in boxes.values():
                box.update(facts[box["address"]])
            return {str(name): box for name, box in boxes.items()}
        if time.monotonic() > deadline:
            raise BackendUnavailableError(
                f"no worker with a free gpu slot joined the Dask scheduler {client.scheduler.address} within "
                f"{wait_s:.0f} s — start one: python src/benchmark.py worker {client.scheduler.address} --name BOX"
            )
        time.sleep(0.5)


def require_same_versions(client, head: dict[str, Any]) -> None:
    """Dask's own check, then ragsweep's sources and the model libraries: a mismatch names the box and the package (exit 2)."""
    from . import cluster_worker

    try:
        client.get_versions(check=True)
    except ValueError as error:
        raise ConfigError(f"Dask versions differ between the head and the boxes: {str(error).splitlines()[0]}") from None
    for address, identity in client.run(cluster_worker.identity).items():
        for package, version in head.items():
            if package != "box" and identity.get(package) != version:
                name = identity.get("box", address)
                raise ConfigError(
                    f"box {name} has {package} {identity.get(package)}, the head has {version} — install the same "
                    "checkout and requirements on every box"
                )


def fill_embeddings(ctx: RunContext, retrievers: list[ModelInfo], chunks, questions: list[Question]) -> None:
    """Each dense retriever's missing vectors, made on the boxes in parallel and stored here as they arrive."""
    if not isinstance(ctx.backend, ClusterBackend):
        return
    jobs = {}
    for retriever in retrievers:
        texts = missing_texts(ctx, retriever, chunks, questions) if needs_model(retriever.name) else {}
        if texts:
            jobs[retriever.name] = {"kind": "embed", "info": asdict(retriever), "texts": texts, "batch_size": ctx.platform.embed_batch_size}
    _run_jobs(ctx, "retrieve", jobs)


def fill_answers(ctx: RunContext, llms: list[ModelInfo], retrievers: list[str], questions: list[Question]) -> None:
    """Each LLM's missing answers, made on the boxes in parallel and stored here as they arrive."""
    if not isinstance(ctx.backend, ClusterBackend):
        return
    jobs = {}
    for llm in llms:
        prompts = {key: work.prompt for key, work in pending_answers(ctx, llm, retrievers, questions).items()}
        if prompts:
            jobs[llm.name] = {
                "kind": "answer",
                "info": asdict(llm),
                "prompts": {k: asdict(p) for k, p in prompts.items()},
                "options": asdict(ctx.generation_options),
            }
    _run_jobs(ctx, "generate", jobs)


def _run_jobs(ctx: RunContext, stage: str, jobs: dict[str, dict]) -> None:
    """One task per model (gpu=1), all at once; drain their stream until every task ended; stop the boxes on Ctrl-C."""
    from distributed import Event as DaskEvent
    from distributed import Queue, Variable

    from .cluster_worker import run_stage_on_box

    if not jobs:
        return
    client, tag = ctx.backend.client, f"ragsweep-{ctx.run_id}-{stage}"
    queue, stop = Queue(f"{tag}-stream", client=client), DaskEvent(f"{tag}-stop", client=client)
    done = {name: Variable(f"{tag}-done-{index}", client=client) for index, name in enumerate(jobs)}
    settings = ctx.settings.public_dict()
    futures = {}
    for index, (name, job) in enumerate(jobs.items()):
        job.update(queue=queue.name, stop=stop.name, done=done[name].name, settings=settings, run_id=ctx.run_id, stage=stage)
        done[name].set([])
        futures[name] = client.submit(run_stage_on_box, job, resources={"gpu": 1}, key=f"{tag}-{index}", pure=False)
    received = {name: set() for name in jobs}
    try:
        _drain(ctx, queue, futures, received, done)
    except BaseException:
        stop.set()  # the boxes leave their stage and unload before their task ends
        client.cancel(list(futures.values()))
        raise


def _drain(ctx: RunContext, queue, futures: dict, received: dict[str, set], done: dict) -> None:
    lonely_since, ended = None, set()
    while True:
        try:
            messages = queue.get(timeout=DRAIN_S, batch=True)
        except TimeoutError:
            messages = []
        except OSError as error:
            raise BackendUnavailableError(
                f"the Dask scheduler stopped answering ({error}) — finished work is saved: run the same command again"
            ) from None
        for message in messages:
            _store(ctx, message, received)
        for name, keys in received.items():
            if keys and len(keys) != len(done[name].get() or []):
                done[name].set(sorted(keys))  # a rescheduled task skips these
        for name in [name for name, future in futures.items() if future.done() and name not in ended]:
            _finish(ctx, name, futures[name])
            ended.add(name)
        if len(ended) == len(futures) and not messages:
            return
        lonely_since = _no_box_left(ctx, lonely_since)


def _store(ctx: RunContext, message: tuple, received: dict[str, set]) -> None:
    """The head is the only writer: every result is committed the moment it arrives."""
    import numpy as np

    kind, model, *payload = message
    if kind == "vectors":
        digest, batch = payload
        ctx.store.put_embeddings(digest, [(h, np.frombuffer(vector, dtype=np.float32)) for h, vector in batch])
        received[model].update(h for h, _ in batch)
    elif kind == "answer":
        key, digest, answer, degraded = payload
        if degraded:  # made with less context than configured: used for this run, never cached
            ctx.prefilled[key] = answer
        else:
            ctx.store.put_answer_cache(key, digest, answer["text"], answer["prompt_tokens"], answer["completion_tokens"], answer["seconds"])
        ctx.model_call_s += answer["seconds"]
        received[model].add(key)
    elif kind == "failed":
        key, cause, text = payload
        ctx.prefilled[key] = ModelCallError(text, cause=cause)
        received[model].add(key)
    elif kind == "event":
        event, stage, data = payload
        ctx.log.event(Event(event), stage, model, **data)
    elif kind == "snapshot":
        ctx.log.add_snapshot_rows(payload)


def _finish(ctx: RunContext, name: str, future) -> None:
    """A task ended: an error there (the model never loaded on its box) is that model's failure, not the run's."""
    if future.status == "error":
        error = future.exception()
        ctx.backend.failures[name] = f"{type(error).__name__}: {error}"
        ctx.log.event(Event.MODEL_FAILED, None, name, cause=getattr(error, "cause", "cluster"), message=str(error))


def _no_box_left(ctx: RunContext, since: float | None) -> float | None:
    """With every box gone, wait cluster_wait_s for one to come back, then stop (exit 3, resumable)."""
    workers = ctx.backend.client.scheduler_info(n_workers=-1)["workers"]
    if any(w.get("resources", {}).get("gpu") for w in workers.values()):
        return None
    since = since or time.monotonic()
    if time.monotonic() - since > ctx.settings.cluster_wait_s:
        raise BackendUnavailableError(
            f"no box left on the Dask scheduler for {ctx.settings.cluster_wait_s:.0f} s — finished work is "
            "saved: start a worker and run the same command again"
        )
    return since
