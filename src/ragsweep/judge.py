"""Judge stage: RAGAS faithfulness, answer_relevancy, context_precision, context_recall per sample.

Each (sample, metric) cell is judged once: cached by (judge identity, metric, exact inputs), so a
re-run never pays twice and a changed judge never regenerates answers. A cell that still fails
after the retries is NaN with a recorded cause (judge_errors.csv); failures are not cached, so
the next run, or --retry-failed, tries them again. An Ollama judge follows the memory discipline:
loaded once after all generation, unloaded and verified at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import httpx

from .backends import Backend, GenerationOptions, get_backend
from .backends.ollama import normalize_host
from .config import Settings
from .errors import BackendUnavailableError, ConfigError, MissingPackageError
from .events import Event
from .interrupts import raise_if_signalled
from .judge_client import CostCapReached, JudgeClient, JudgeSpec, Usage, classify, current_cell, price_per_token
from .lifecycle import resident_model
from .metrics import JUDGE_INPUTS, JUDGE_METRICS
from .nvml import device_used_bytes
from .progress import bar
from .redact import redact
from .retrievers import CLOSED_BOOK, needs_model
from .run import RunContext

STAGE = "judge"


@dataclass(frozen=True)
class Cell:
    embedding_model: str
    llm: str
    question_id: str
    metric: str
    repeat: int  # 0 .. judge_repeats - 1: independent judgements of the same inputs
    inputs: dict
    key: str


def resolve_judge(settings: Settings, default_concurrency: int, environ: dict[str, str] | None = None) -> JudgeSpec | None:
    """The judge to use, or None (with the reason left to the caller) when LLM metrics are off."""
    environ = os.environ if environ is None else environ
    model = settings.judge or ("gpt-4o-mini" if environ.get("OPENAI_API_KEY") else "none")
    if model == "none":
        return None
    base_url = settings.judge_base_url
    if model.startswith("ollama"):
        base_url = base_url or settings.ollama_host
    elif model.startswith("openai/") and not base_url and not environ.get("OPENAI_API_KEY"):
        raise ConfigError(f"--judge {model}: an openai/ judge needs --judge-base-url (an OpenAI-compatible server) or OPENAI_API_KEY")
    if settings.max_judge_cost is not None and price_per_token(model) is None:
        raise ConfigError(
            f"{settings.origin('max_judge_cost')}: LiteLLM has no price for the judge {model}, so the cap could never "
            "apply — drop --max-judge-cost for a local or self-hosted judge, or use a judge LiteLLM can price"
        )
    return JudgeSpec(
        model=model,
        embeddings=settings.judge_embeddings or _default_embeddings(model, settings),
        base_url=base_url,
        **_judge_concurrency(model, settings.judge_concurrency, default_concurrency),
        timeout_s=settings.judge_timeout_s,
        retries=settings.judge_retries,
        parse_retries=settings.judge_parse_retries,
        max_tokens=settings.judge_max_tokens,
        num_ctx=settings.judge_num_ctx if model.startswith("ollama") else None,
        metric_timeout_s=settings.judge_metric_timeout_s,
        metric_parse_retries=settings.judge_metric_parse_retries,
        repeats=settings.judge_repeats,
    )


CLOUD_START, CLOUD_CEILING = 8, 64  # calls in flight for a judge whose memory is not ours: rate limits (429) find the rest


def _judge_concurrency(model: str, setting: int | None, local_default: int) -> dict[str, int]:
    """An Ollama judge shares this box's memory: the platform's small cap (2 on a card), fixed. Any other judge (a cloud
    API, a server at a URL) starts at 8 and adapts up to 64; --judge-concurrency is the ceiling either way."""
    if model.startswith("ollama"):
        return {"concurrency": setting or local_default}
    ceiling = setting or CLOUD_CEILING
    return {"concurrency": ceiling, "start_concurrency": min(CLOUD_START, ceiling)}


def require_same_judge(run_id: str, stored_plan: dict, spec: JudgeSpec) -> None:
    """--retry-failed re-judges in place: a different judge would mix two judges' scores under one name."""
    judged_by = stored_plan.get("judge")
    same = stored_plan.get("judge_identity", spec.identity) == spec.identity if judged_by else False
    if judged_by != spec.model or not same:
        was = f"was judged by {judged_by}" if judged_by else "was not judged"
        raise ConfigError(
            f"--retry-failed: run {run_id} {was}, not by {spec.model} with these settings — "
            "drop --retry-failed to judge in a new run (cached answers are reused)"
        )


def no_judge_hint(settings: Settings) -> str:
    """How to turn judging on, in a form that works from where the user stands (a pinned `judge: none` outranks the key)."""
    local = "--judge ollama_chat/NAME (a local judge) or --judge openai/NAME --judge-base-url URL"
    if settings.judge == "none":
        return f"judging is off (judge: none); pass --judge gpt-4o-mini with OPENAI_API_KEY set, {local}"
    return f"no judge: set OPENAI_API_KEY for gpt-4o-mini, or pass {local}"


def _default_embeddings(model: str, settings: Settings) -> str:
    if model.startswith("ollama"):
        dense = [name for name in settings.embeddings if needs_model(name)]
        if settings.backend != "ollama" or not dense:
            raise ConfigError(
                f"--judge {model}: answer_relevancy needs an embedding model on Ollama — pass --judge-embeddings ollama/NAME "
                "(e.g. ollama/nomic-embed-text)"
            )
        return f"ollama/{dense[0]}"
    if model.startswith("openai/"):
        return "openai/text-embedding-3-small"
    return "text-embedding-3-small"


def require_judge_reachable(spec: JudgeSpec, settings: Settings) -> None:
    """A judge server named by URL must answer before any model loads; else the night's answers wait for a judge that
    is not there, and every cell fails after its retries. Any HTTP answer counts, a 404 or 401 included. A cloud judge
    (no URL) is not called here: that would cost money, and its failures are data."""
    if not spec.base_url:
        return
    field = "ollama_host" if spec.model.startswith("ollama") and not settings.judge_base_url else "judge_base_url"
    url = normalize_host(spec.base_url) if field == "ollama_host" else spec.base_url
    try:
        httpx.get(url, timeout=10)
    except httpx.TransportError as error:
        raise BackendUnavailableError(
            f"the judge's server at {url} is not reachable ({type(error).__name__}) — start it, or fix {field} ({settings.origin(field)})"
        ) from None


def require_judge_packages() -> None:
    import importlib.util

    for module, requirement in (("ragas", "ragas==0.4.3"), ("litellm", "litellm==1.110.2")):
        if importlib.util.find_spec(module) is None:
            raise MissingPackageError("LLM judging (--judge)", requirement)


def cells_for(ctx: RunContext, spec: JudgeSpec, only_failed: bool = False) -> list[Cell]:
    """Every (answered sample, metric, repeat) cell of this run; with only_failed, those without a score.

    The closed-book baseline has no passages: only answer_relevancy applies to it.
    """
    failed = (
        {
            (j["embedding_model"], j["llm"], j["question_id"], j["metric"], j["repeat"])
            for j in ctx.store.judgements(ctx.run_id)
            if j["value"] is None
        }
        if only_failed
        else set()  # the judge's thread asks every half second while the LLMs answer: read only what it needs
    )
    contexts: dict[str, dict] = {}
    cells = []
    for sample in ctx.store.samples(ctx.run_id):
        if sample["error"]:
            continue  # no answer: nothing to judge (already a failed sample)
        retriever = sample["embedding_model"]
        if retriever not in contexts:
            contexts[retriever] = ctx.store.retrievals(ctx.run_id, retriever)
        retrieved = contexts[retriever][sample["question_id"]]["contexts"]
        base = {
            "user_input": sample["question"],
            "response": sample["answer"],
            "retrieved_contexts": retrieved,
            "reference": sample["reference"],
        }
        for metric in JUDGE_METRICS:
            if retriever == CLOSED_BOOK and "retrieved_contexts" in JUDGE_INPUTS[metric]:
                continue
            inputs = {k: v for k, v in base.items() if k in JUDGE_INPUTS[metric]}
            for repeat in range(spec.repeats):
                if only_failed and (retriever, sample["llm"], sample["question_id"], metric, repeat) not in failed:
                    continue
                cells.append(
                    Cell(retriever, sample["llm"], sample["question_id"], metric, repeat, inputs, cell_key(spec, metric, inputs, repeat))
                )
    return cells


def cell_key(spec: JudgeSpec, metric: str, inputs: dict, repeat: int) -> str:
    """Judge identity + metric + exact inputs; repeat 0 keeps the key judgements had before repeats existed."""
    again = f"|repeat={repeat}" if repeat else ""
    return hashlib.sha256(f"{spec.identity}|{metric}|{json.dumps(inputs, sort_keys=True)}{again}".encode()).hexdigest()


POLL_S = 0.5  # how often a judge that runs beside generation looks for new answers


@contextmanager
def judging_beside(ctx: RunContext, spec: JudgeSpec | None) -> Iterator[Judging | None]:
    """A judge whose memory ragsweep does not manage judges while the block generates; an Ollama judge waits (None)."""
    if spec is None or spec.memory_managed:
        yield None
        return
    judging = Judging(ctx, spec).start()
    try:
        yield judging
    except BaseException:
        judging.stop()  # the run is ending: no new judge calls
        raise


def judge(ctx: RunContext, spec: JudgeSpec, only_failed: bool = False, cells: list[Cell] | None = None) -> Usage:
    """Judge every cell not cached, all at once (after generation: an Ollama judge alone in memory, --retry-failed, or
    the given `cells` of a judge check)."""
    judging = Judging(ctx, spec, only_failed, source=(lambda: cells) if cells is not None else None)
    if judging.todo_now():
        with _resident_judge(ctx, spec):
            judging.start(answers_done=True)
            judging.finish()
    else:
        judging.finish()
    return judging.usage


class Judging:
    """The judge stage on a thread of its own: cells are taken from the store as their answers appear, and judged with the
    adaptive number of calls in flight. Started before generation, a judge whose memory ragsweep does not manage (a cloud
    API, a server at a URL) judges while the LLMs answer; `finish` waits for the tail after the last answer."""

    def __init__(
        self,
        ctx: RunContext,
        spec: JudgeSpec,
        only_failed: bool = False,
        client: JudgeClient | None = None,
        source: Callable[[], list[Cell]] | None = None,
    ):
        self.ctx, self.spec = ctx, spec
        self.source = source or (lambda: cells_for(ctx, spec, only_failed))  # every cell the run has now
        self.usage = Usage()
        self.client = client or JudgeClient(spec, cost_cap_usd=ctx.settings.max_judge_cost)
        self.client.gate.on_change = self._concurrency_changed
        self.cells = 0  # cells judged by calls (not from the cache)
        self.first_call_t: float | None = None
        self._seen: set[tuple] = set()  # cells recorded or queued
        self._pending: dict[str, list[Cell]] = {}  # key -> cells waiting for that key's score (twins join while it is judged)
        self._queue: list[str] = []  # keys found, not yet handed to the loop
        self._answers_done = threading.Event()  # no answer will be added any more: the last look, then the end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._unjudged: list[Cell] = []  # left when the cost cap was reached

    def todo_now(self) -> bool:
        """Look at the store now: True when some cell needs a judge call (cached cells are recorded on the way)."""
        self._look()
        return bool(self._queue)

    def start(self, answers_done: bool = False) -> Judging:
        self.ctx.log.event(Event.STAGE_START, STAGE, self.spec.model, overlapped=not answers_done)
        if answers_done:
            self._answers_done.set()
        self._thread = threading.Thread(target=self._run, name="ragsweep-judge", daemon=True)
        self._thread.start()
        return self

    def finish(self) -> None:
        """Every answer is in: judge what is left, wait for it (a signal still stops the wait), then log the stage's end."""
        self._answers_done.set()
        try:
            while self._thread is not None and self._thread.is_alive():
                raise_if_signalled()
                self._thread.join(timeout=0.2)
        except BaseException:
            self.stop()  # a signal: the judge's thread records nothing more while the run writes its exports
            raise
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self.ctx.log.event(Event.STAGE_START, STAGE, self.spec.model, overlapped=False)
            self.ctx.log.event(Event.MODEL_SKIPPED, STAGE, self.spec.model, reason="all judgements cached")
        if self._unjudged:
            cap = f"${self.usage.cost_usd or 0.0:.4f}, the --max-judge-cost cap (${self.client.cost_cap_usd:.4f})"
            self.ctx.note(f"judging stopped at {cap}: {len(self._unjudged)} judge cells not judged", STAGE)
            self.ctx.log.event(Event.JUDGE_COST_CAP, STAGE, self.spec.model, cost_usd=self.usage.cost_usd, cells_left=len(self._unjudged))
        gate = self.client.gate
        self.ctx.log.event(
            Event.STAGE_END,
            STAGE,
            self.spec.model,
            cells=self.cells,
            calls=self.usage.calls,
            cost_usd=self.usage.cost_usd,
            peak_in_flight=gate.peak,
            throttled=gate.throttled,
            first_call_t=self.first_call_t,
        )

    def stop(self) -> None:
        """The run is ending early: calls in flight finish, nothing new starts."""
        self._stop.set()
        self._answers_done.set()

    def _look(self) -> None:
        """New cells from the store: cached ones recorded at once, twins joined to a key being judged, the rest queued."""
        fresh = self.ctx.settings.fresh
        for cell in self.source():
            where = (cell.embedding_model, cell.llm, cell.question_id, cell.metric, cell.repeat)
            if where in self._seen:
                continue
            self._seen.add(where)
            if cell.key in self._pending:
                self._pending[cell.key].append(cell)
                continue
            cached = None if fresh else self.ctx.store.cached_judgement(cell.key)
            if cached:
                _record(self.ctx, cell, cached["value"], None, None, cached, cached_hit=True)
            else:
                self._pending[cell.key] = [cell]
                self._queue.append(cell.key)

    def _run(self) -> None:
        try:
            asyncio.run(self._judge_all())
        except BaseException as error:  # noqa: BLE001 (raised again in the run's thread by finish)
            self._error = error

    async def _judge_all(self) -> None:
        metrics = self.client.metrics()
        work: asyncio.Queue[str | None] = asyncio.Queue()
        workers = max(1, self.spec.concurrency * 2)  # enough to keep the ceiling busy (a metric makes several calls in sequence)

        async def feed() -> None:
            while not self._stop.is_set():
                last = self._answers_done.is_set()
                self._look()
                for key in self._queue:
                    work.put_nowait(key)
                self._queue.clear()
                if last:
                    break
                await asyncio.sleep(POLL_S)
            for _ in range(workers):
                work.put_nowait(None)

        async def worker() -> None:
            while (key := await work.get()) is not None:
                raise_if_signalled()
                if self._stop.is_set():
                    continue
                cells = self._pending[key]
                if self.client.over_cap():
                    self._unjudged.extend(self._pending.pop(key))
                    continue
                await _relieve_pressure(self.ctx, self.client, self.spec)
                self.first_call_t = self.first_call_t or time.time()
                judged = await _judge_cell(self.ctx, metrics, self.spec, cells, self.usage, stopping=self._stop.is_set)
                self._pending.pop(key)  # no await since the score was recorded: a twin found later reads the cache
                if judged:
                    self.cells += 1
                    self.progress.advance(len(cells))
                else:
                    self._unjudged.extend(cells)

        with bar(f"judge {self.spec.model}", len(self._queue), self.ctx.quiet or not self._answers_done.is_set()) as self.progress:
            await asyncio.gather(feed(), *(worker() for _ in range(workers)))

    def _concurrency_changed(self, before: int, after: int, cause: str) -> None:
        self.ctx.log.event(Event.JUDGE_CONCURRENCY, STAGE, self.spec.model, concurrency=before, new_concurrency=after, cause=cause)


async def _judge_cell(
    ctx: RunContext, metrics: dict, spec: JudgeSpec, cells: list[Cell], usage: Usage, stopping: Callable[[], bool] = lambda: False
) -> bool:
    """Score one cell (and its twins that share the key); False when the cost cap refused a call and the cell stays unjudged.

    Once the run is `stopping` (it writes its exports now), the cell's outcome is not recorded, neither score nor failure.
    """
    cell = cells[0]
    cell_usage = Usage()
    current_cell.set(cell_usage)  # this task's judge calls are counted here
    try:
        result = await asyncio.wait_for(metrics[cell.metric].ascore(**cell.inputs), timeout=_metric_timeout(spec, cell))
        raise_if_signalled()
        value, cause, message = _value(result.value)
    except Exception as error:  # failures are data: NaN plus a recorded cause
        if stopping():
            raise_if_signalled()
            return False
        if _caused_by(error, CostCapReached):
            usage.add(cell_usage)
            return False
        value, cause, message = None, classify(error), f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    if stopping():
        return False
    usage.add(cell_usage)
    for index, twin in enumerate(cells):  # the usage is paid once, by the first
        _record(ctx, twin, value, cause, message, cell_usage.as_dict() if index == 0 else {}, cached_hit=index > 0)
    if value is not None:
        ctx.store.put_judge_cache(cell.key, spec.identity, cell.metric, value, cell_usage.as_dict())
    return True


async def _relieve_pressure(ctx: RunContext, client: JudgeClient, spec: JudgeSpec) -> None:
    """A local judge beside other memory: above the threshold, halve the calls in flight (for the rest of the stage)."""
    used = device_used_bytes()
    if used is not None and used > ctx.platform.pressure_threshold_bytes and client.capacity > 1:
        before = client.capacity
        after = await client.halve()
        if after != before:  # another worker's halving is under way: it logs its own
            ctx.log.event(Event.MEMORY_PRESSURE, STAGE, spec.model, used_bytes=used, judge_concurrency=before, new_judge_concurrency=after)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__ or getattr(error, "last_exception", None)
    return False


def _metric_timeout(spec: JudgeSpec, cell: Cell) -> float:
    """The configured per-metric timeout, else room for every sequential call of the metric, each with its retries."""
    if cell.metric in spec.metric_timeout_s:
        return spec.metric_timeout_s[cell.metric]
    calls = {
        "faithfulness": 2,
        "answer_relevancy": 5,
        "context_precision": len(cell.inputs.get("retrieved_contexts", [])),
        "context_recall": 1,
    }[cell.metric]
    return spec.timeout_s * max(calls, 1) * (spec.retries + 1) * (spec.parse_retries + 1)


def _value(value) -> tuple[float | None, str | None, str | None]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "undefined", "the metric returned no score"
    return float(value), None, None


def _record(ctx: RunContext, cell: Cell, value, cause, message, usage: dict, cached_hit: bool) -> None:
    ctx.store.put_judgement(
        ctx.run_id,
        cell.embedding_model,
        cell.llm,
        cell.question_id,
        cell.metric,
        {
            "repeat": cell.repeat,
            "value": value,
            "cause": cause,
            "message": redact(message) if message else message,  # LiteLLM's errors may quote the judge's URL
            "cached": int(cached_hit),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cost_usd": usage.get("cost_usd"),
        },
    )


def _resident_judge(ctx: RunContext, spec: JudgeSpec):
    """A judge on Ollama is a model like the others: clean state, load once, unload, verify."""
    if not spec.model.startswith("ollama"):
        return nullcontext()
    backend = _judge_backend(ctx, spec)
    info = backend.describe(spec.model.split("/", 1)[1], "llm")
    options = GenerationOptions(max_tokens=spec.max_tokens, temperature=0.01, seed=0, num_ctx=spec.num_ctx or 8192)
    return resident_model(backend, info, STAGE, ctx.log, options)


def _judge_backend(ctx: RunContext, spec: JudgeSpec) -> Backend:
    """The run's own backend when the judge lives on the same Ollama; else one built the same way (timeouts, retries, logging)."""
    settings = ctx.settings.model_copy(update={"backend": "ollama", "ollama_host": spec.base_url})
    if ctx.settings.backend == "ollama" and normalize_host(ctx.settings.ollama_host) == normalize_host(spec.base_url):
        return ctx.backend
    backend = get_backend(settings, ctx.platform.device)
    backend.on_retry, backend.log_path = ctx.backend.on_retry, ctx.backend.log_path
    return backend
