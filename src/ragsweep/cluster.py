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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS, get_backend
from .backends.base import Backend, LoadedInfo, LoadedModel, ModelInfo
from .errors import BackendUnavailableError, ConfigError, ModelCallError
from .events import Event
from .generation import pending_answers
from .interrupts import raise_if_signalled
from .platform import Budget
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
        self.serves_concurrently = BACKENDS[settings.backend].serves_concurrently  # the boxes run the head's backend by default
        self.client = None
        self.boxes: dict[str, dict[str, Any]] = {}  # box name -> its slots, NVML total, versions
        self.failures: dict[str, str] = {}  # model -> why no box could run it
        self.refused: set[str] = set()  # boxes that joined after the plan with other versions: no stage runs there

    @classmethod
    def from_settings(cls, settings, device: str) -> ClusterBackend:
        return cls(settings.cluster, settings, device)

    def check(self) -> None:
        from . import cluster_worker

        tls = security(self.address, self.settings.cluster_tls_ca_file, self.settings.cluster_tls_cert, self.settings.cluster_tls_key)
        self.client = connect(self.address, tls)
        wait_for_boxes(self.client, self.settings.cluster_wait_s)
        require_same_versions(self.client, cluster_worker.identity())  # first: a box with other sources may lack what facts() needs
        self.boxes = find_boxes(self.client, self.settings.backend)

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

    def budgets(self) -> dict[str, Budget]:
        return {name: Budget(**box["budget"]) for name, box in self.boxes.items()}

    def allowed_boxes(self, larger_than: int = 0) -> dict[str, str]:
        """The boxes connected now (one may have joined since the plan), but the refused ones, with more memory than
        `larger_than` bytes: name -> address."""
        present = {name: box for name, box in find_boxes(self.client, self.settings.backend).items() if name not in self.refused}
        self.boxes.update(present)
        return {name: box["address"] for name, box in present.items() if Budget(**box["budget"]).capacity_bytes > larger_than}

    def versions(self) -> dict[str, str]:
        return {f"box {name}": box["ragsweep"] for name, box in self.boxes.items()}

    def _name(self, address: str) -> str:
        return next((name for name, box in self.boxes.items() if box["address"] == address), address)


def backend_for(settings, device: str) -> Backend:
    """The boxes of --cluster, else the backend the settings name, here."""
    return ClusterBackend.from_settings(settings, device) if settings.cluster else get_backend(settings, device)


def security(address: str, ca_file, cert, key, where: str = "cluster_tls_ca_file, cluster_tls_cert and cluster_tls_key"):
    """Dask TLS for boxes that cannot tunnel: a tls:// address needs all three files; tcp:// (an SSH tunnel) needs none."""
    files = {"CA file": ca_file, "certificate": cert, "key": key}
    given = {name: Path(path) for name, path in files.items() if path}
    if not address.startswith("tls://"):
        if given:
            raise ConfigError(f"{address}: TLS files are set but the address is not tls:// — use tls://{address.split('://')[-1]}")
        return None
    if len(given) < len(files):
        raise ConfigError(f"{address} needs a CA file, a certificate and a key: set {where}")
    for name, path in given.items():
        if not path.is_file():
            raise ConfigError(f"{address}: the TLS {name} {path} does not exist ({where})")
    from distributed.security import Security

    ca_file, cert, key = (str(path) for path in given.values())
    return Security(
        tls_ca_file=ca_file,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_scheduler_cert=cert,  # read only by `benchmark.py scheduler`
        tls_scheduler_key=key,
        require_encryption=True,
    )


def connect(address: str, tls=None):
    """A Dask client, or exit 3 within seconds when the scheduler is not there."""
    from distributed import Client

    try:
        return Client(address, timeout="10s", set_as_default=False, security=tls)
    except (OSError, TimeoutError) as error:
        raise BackendUnavailableError(
            f"no Dask scheduler at {address} ({error}) — start it with `dask scheduler`, or check the SSH tunnel / --cluster address"
        ) from None


def find_boxes(client, backend: str) -> dict[str, dict[str, Any]]:
    """Every connected worker with a gpu slot, with what it says of itself (memory, versions)."""
    from . import cluster_worker

    boxes = {str(w["name"]): {"address": address, "gpus": int(w["resources"]["gpu"])} for address, w in gpu_workers(client).items()}
    if boxes:
        facts = client.run(cluster_worker.facts, backend, workers=[box["address"] for box in boxes.values()], on_error="return")
        boxes = {name: {**box, **facts[box["address"]]} for name, box in boxes.items() if isinstance(facts.get(box["address"]), dict)}
    return boxes


def gpu_workers(client) -> dict[str, dict[str, Any]]:
    """The scheduler's workers with a gpu slot, by address, asked now: Client.scheduler_info returns a cache that
    Dask's background refresh can replace with one listing no worker at all."""
    try:
        identity = client.sync(client.scheduler.identity, n_workers=-1)
    except OSError as error:
        raise BackendUnavailableError(
            f"the Dask scheduler stopped answering ({error}) — finished work is saved: run the same command again"
        ) from None
    return {address: w for address, w in identity["workers"].items() if w.get("resources", {}).get("gpu")}


def wait_for_boxes(client, wait_s: float) -> None:
    """Until a worker with a gpu slot is connected; exit 3 when none comes within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not gpu_workers(client):
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
    for identity in client.run(cluster_worker.identity).values():
        if difference := cluster_worker.version_difference(head, identity):
            raise ConfigError(difference)


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
                "options": asdict(ctx.generation_options(llm.name)),
                "generation_concurrency": ctx.settings.generation_concurrency,
            }
    _run_jobs(ctx, "generate", jobs)


@dataclass
class Stage:
    """One model's stage on the boxes: its task, what has come back, and the boxes it ran on."""

    name: str
    job: dict[str, Any]
    done: Any  # a Dask Variable: the keys the head has, which a rescheduled or moved task skips
    future: Any = None
    received: set[str] = field(default_factory=set)
    shared: int = 0  # how many of `received` the Variable holds
    out_of_memory: set[str] = field(default_factory=set)  # keys that failed for memory: a bigger box may answer them
    box: str | None = None  # where its model was last loaded
    tried: list[str] = field(default_factory=list)  # "box: why" for each box that could not finish it
    targets: dict[str, str] = field(default_factory=dict)  # the bigger boxes it was moved to (name -> address); empty: any box
    outgrown: int = 0  # the capacity of the largest box it ran out of memory on: it may only go to bigger ones
    stranded_since: float | None = None  # when the last of its target boxes left
    attempts: int = 0
    ended: bool = False

    def share(self) -> None:
        if len(self.received) != self.shared:
            self.done.set(sorted(self.received))
            self.shared = len(self.received)


def _run_jobs(ctx: RunContext, stage: str, jobs: dict[str, dict]) -> None:
    """One task per model (gpu=1), all at once; drain their stream until every task ended; stop the boxes on Ctrl-C."""
    from distributed import Event as DaskEvent
    from distributed import Queue, Variable

    from . import cluster_worker

    if not jobs:
        return
    client, tag = ctx.backend.client, f"ragsweep-{ctx.run_id}-{stage}"
    queue, stop = Queue(f"{tag}-stream", client=client), DaskEvent(f"{tag}-stop", client=client)
    settings, head = ctx.settings.public_dict(), cluster_worker.identity()
    stages = {}
    for index, (name, job) in enumerate(jobs.items()):
        done = Variable(f"{tag}-done-{index}", client=client)
        job.update(queue=queue.name, stop=stop.name, done=done.name, settings=settings, stage=stage, key=f"{tag}-{index}", head=head)
        done.set([])
        stages[name] = Stage(name, job, done)
        _submit(client, stages[name], ctx.backend.allowed_boxes() if ctx.backend.refused else None)
    try:
        _drain(ctx, queue, stages)
    except BaseException:
        stop.set()  # the boxes leave their stage and unload before their task ends
        client.cancel([s.future for s in stages.values()])
        raise


def _submit(client, stage: Stage, targets: dict[str, str] | None = None) -> None:
    """The stage's task: on any box with a free gpu slot, or only on `targets` (name -> address): the bigger boxes
    when it moves to more memory, the boxes present but the refused ones after a box with other versions joined."""
    from .cluster_worker import run_stage_on_box

    stage.targets, stage.attempts = targets or {}, stage.attempts + 1
    key = f"{stage.job['key']}-{stage.attempts}"  # a new key: Dask would hand back the finished task for an old one
    workers = list(stage.targets.values()) or None
    stage.future = client.submit(
        run_stage_on_box, stage.job, resources={"gpu": 1}, workers=workers, allow_other_workers=False, key=key, pure=False
    )


def _drain(ctx: RunContext, queue, stages: dict[str, Stage]) -> None:
    lonely_since, present = None, None
    while True:
        raise_if_signalled()
        try:
            messages = queue.get(timeout=DRAIN_S, batch=True)
        except TimeoutError:
            messages = []
        except OSError as error:
            raise BackendUnavailableError(
                f"the Dask scheduler stopped answering ({error}) — finished work is saved: run the same command again"
            ) from None
        for message in messages:
            _store(ctx, message, stages)
        for stage in stages.values():
            stage.share()
            if not stage.ended and stage.future.done():
                _finish(ctx, stage)
        if all(stage.ended for stage in stages.values()) and not messages:
            return
        present = _note_lost_boxes(ctx, stages, present)
        lonely_since = _no_box_left(ctx, present, lonely_since)
        _give_up_stranded(ctx, stages, present)


def _store(ctx: RunContext, message: tuple, stages: dict[str, Stage]) -> None:
    """The head is the only writer: every result is committed the moment it arrives."""
    import numpy as np

    kind, model, *payload = message
    if kind == "vectors":
        digest, batch = payload
        ctx.store.put_embeddings(digest, [(h, np.frombuffer(vector, dtype=np.float32)) for h, vector in batch])
        stages[model].received.update(h for h, _ in batch)
    elif kind == "answer":
        key, digest, answer, degraded = payload
        if degraded:  # made with less context than configured: used for this run, never cached
            ctx.prefilled[key] = answer
        else:
            ctx.store.put_answer_cache(key, digest, answer["text"], answer["prompt_tokens"], answer["completion_tokens"], answer["seconds"])
        ctx.model_call_s += answer["seconds"]
        stages[model].received.add(key)
    elif kind == "failed":
        key, cause, text = payload
        ctx.prefilled[key] = ModelCallError(text, cause=cause)
        stages[model].received.add(key)
        if cause == "out_of_memory":
            stages[model].out_of_memory.add(key)
    elif kind == "event":
        event, stage, data = payload
        if event == Event.MODEL_LOAD and model in stages:
            stages[model].box = data["box"]
        ctx.log.event(Event(event), stage, model, **data)
    elif kind == "snapshot":
        ctx.log.add_snapshot_rows(payload)


def _finish(ctx: RunContext, stage: Stage) -> None:
    """A task ended. Out of memory on its box (at load, or for some answers): the rest moves to a box with more memory,
    if one is connected; any other failure is that model's, not the run's."""
    if stage.future.status == "error":  # Dask itself gave up on the task (it killed box after box)
        error = stage.future.exception()
        if "deserialization of the task graph" in str(error):  # the scheduler cannot import ragsweep: every stage would fail
            raise BackendUnavailableError(
                f"the Dask scheduler at {ctx.backend.address} cannot read ragsweep's tasks (it cannot import ragsweep) — start it "
                "with `python src/benchmark.py scheduler --host 127.0.0.1 --port 8786` instead of `dask scheduler`; finished work "
                "is saved: run the same command again"
            )
        stage.tried.append(f"{type(error).__name__}: {error}")
        _give_up(ctx, stage, getattr(error, "cause", "cluster"), str(error))
        return
    result = stage.future.result()
    failed = result.get("failed")
    if failed and failed["cause"] == "version_mismatch":  # a box that joined after the plan, with other sources or libraries
        ctx.backend.refused.add(result["box"])
        ctx.log.event(Event.BOX_REFUSED, stage.job["stage"], stage.name, box=result["box"], message=failed["message"])
        allowed = ctx.backend.allowed_boxes(stage.outgrown)
        if allowed:
            _submit(ctx.backend.client, stage, allowed)
            return
    if failed:
        stage.tried.append(f"{result['box']}: {failed['message']}")
    if (failed and failed["cause"] == "out_of_memory") or stage.out_of_memory:
        stage.outgrown = max(stage.outgrown, result["capacity_bytes"])
        bigger = ctx.backend.allowed_boxes(stage.outgrown)
        if bigger:
            redo = stage.out_of_memory
            for key in redo:  # answered again on the bigger box
                ctx.prefilled.pop(key, None)
            stage.received -= redo
            stage.out_of_memory = set()
            stage.share()
            ctx.log.event(
                Event.STAGE_MOVED,
                stage.job["stage"],
                stage.name,
                box=result["box"],
                to=", ".join(bigger),
                cause="out_of_memory",
                message=failed["message"] if failed else f"{len(redo)} answers ran out of memory",
            )
            _submit(ctx.backend.client, stage, bigger)
            return
    if failed:
        _give_up(ctx, stage, failed["cause"], failed["message"], box=result["box"])
        return
    stage.ended = True


def _give_up(ctx: RunContext, stage: Stage, cause: str, message: str, **where) -> None:
    ctx.backend.failures[stage.name] = "; ".join(stage.tried)
    ctx.log.event(Event.MODEL_FAILED, None, stage.name, cause=cause, message=message, **where)
    stage.ended = True


def _note_lost_boxes(ctx: RunContext, stages: dict[str, Stage], before: dict[str, str] | None) -> dict[str, str]:
    """The boxes present now (name -> address). One that left while it ran a stage is an event and a report line;
    Dask gives its task to another box."""
    present = {str(w.get("name")): address for address, w in gpu_workers(ctx.backend.client).items()}
    for box in set(before or {}) - set(present):
        for stage in stages.values():
            if stage.box == box and not stage.ended:
                ctx.log.event(
                    Event.BOX_LOST,
                    stage.job["stage"],
                    stage.name,
                    box=box,
                    message=f"box {box} left the cluster during this stage; another box redoes only what the head does not have",
                )
    return present


def _give_up_stranded(ctx: RunContext, stages: dict[str, Stage], present: dict[str, str]) -> None:
    """A stage moved to bigger boxes that have all left goes to any bigger box that (re)joined; with none for
    cluster_wait_s, that model fails (resumable)."""
    for stage in stages.values():
        if stage.ended or not stage.targets or any(present.get(name) == address for name, address in stage.targets.items()):
            stage.stranded_since = None
            continue
        bigger = ctx.backend.allowed_boxes(stage.outgrown)
        if bigger:  # a box with more memory came (back), at a new address: the task's restriction must name it
            ctx.backend.client.cancel([stage.future])
            _submit(ctx.backend.client, stage, bigger)
            continue
        stage.stranded_since = stage.stranded_since or time.monotonic()
        if time.monotonic() - stage.stranded_since > ctx.settings.cluster_wait_s:
            ctx.backend.client.cancel([stage.future])
            stage.tried.append(f"{', '.join(stage.targets)} left before it could run there")
            _give_up(ctx, stage, "cluster", stage.tried[-1])


def _no_box_left(ctx: RunContext, present: dict[str, str], since: float | None) -> float | None:
    """With every box gone, wait cluster_wait_s for one to come back, then stop (exit 3, resumable)."""
    if present:
        return None
    since = since or time.monotonic()
    if time.monotonic() - since > ctx.settings.cluster_wait_s:
        raise BackendUnavailableError(
            f"no box left on the Dask scheduler for {ctx.settings.cluster_wait_s:.0f} s — finished work is "
            "saved: start a worker and run the same command again"
        )
    return since
