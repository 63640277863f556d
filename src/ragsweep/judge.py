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
from contextlib import nullcontext
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
from .metrics import JUDGE_METRICS
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
        concurrency=settings.judge_concurrency or default_concurrency,
        timeout_s=settings.judge_timeout_s,
        retries=settings.judge_retries,
        parse_retries=settings.judge_parse_retries,
        max_tokens=settings.judge_max_tokens,
        num_ctx=settings.judge_num_ctx if model.startswith("ollama") else None,
        metric_timeout_s=settings.judge_metric_timeout_s,
        metric_parse_retries=settings.judge_metric_parse_retries,
        repeats=settings.judge_repeats,
    )


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
    failed = {
        (j["embedding_model"], j["llm"], j["question_id"], j["metric"], j["repeat"])
        for j in ctx.store.judgements(ctx.run_id)
        if j["value"] is None
    }
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
            if retriever == CLOSED_BOOK and "retrieved_contexts" in _FIELDS[metric]:
                continue
            inputs = {k: v for k, v in base.items() if k in _FIELDS[metric]}
            for repeat in range(spec.repeats):
                if only_failed and (retriever, sample["llm"], sample["question_id"], metric, repeat) not in failed:
                    continue
                cells.append(
                    Cell(retriever, sample["llm"], sample["question_id"], metric, repeat, inputs, _cell_key(spec, metric, inputs, repeat))
                )
    return cells


def _cell_key(spec: JudgeSpec, metric: str, inputs: dict, repeat: int) -> str:
    """Judge identity + metric + exact inputs; repeat 0 keeps the key judgements had before repeats existed."""
    again = f"|repeat={repeat}" if repeat else ""
    return hashlib.sha256(f"{spec.identity}|{metric}|{json.dumps(inputs, sort_keys=True)}{again}".encode()).hexdigest()


_FIELDS = {
    "faithfulness": {"user_input", "response", "retrieved_contexts"},
    "answer_relevancy": {"user_input", "response"},
    "context_precision": {"user_input", "reference", "retrieved_contexts"},
    "context_recall": {"user_input", "retrieved_contexts", "reference"},
}


def judge(ctx: RunContext, spec: JudgeSpec, only_failed: bool = False) -> Usage:
    """Judge every cell not cached; returns the usage of the calls made."""
    ctx.log.event(Event.STAGE_START, STAGE, spec.model)
    todo: dict[str, list[Cell]] = {}  # cache key -> the cells sharing it (context_precision/recall do not depend on the LLM)
    for cell in cells_for(ctx, spec, only_failed):
        cached = None if ctx.settings.fresh else ctx.store.cached_judgement(cell.key)
        if cached:
            _record(ctx, cell, cached["value"], None, None, cached, cached_hit=True)
        else:
            todo.setdefault(cell.key, []).append(cell)
    usage = Usage()
    if todo:
        with _resident_judge(ctx, spec):
            asyncio.run(_judge_all(ctx, JudgeClient(spec, cost_cap_usd=ctx.settings.max_judge_cost), spec, todo, usage))
    else:
        ctx.log.event(Event.MODEL_SKIPPED, STAGE, spec.model, reason="all judgements cached")
    ctx.log.event(Event.STAGE_END, STAGE, spec.model, cells=len(todo), calls=usage.calls, cost_usd=usage.cost_usd)
    return usage


async def _judge_all(ctx: RunContext, client: JudgeClient, spec: JudgeSpec, todo: dict[str, list[Cell]], usage: Usage) -> None:
    metrics = client.metrics()
    queue: asyncio.Queue[list[Cell]] = asyncio.Queue()
    for cells in todo.values():
        queue.put_nowait(cells)
    unjudged: list[Cell] = []  # left when the cost cap was reached

    async def worker(progress) -> None:
        while True:
            raise_if_signalled()
            try:
                cells = queue.get_nowait()  # taken before any await: no other worker can empty the queue in between
            except asyncio.QueueEmpty:
                return
            if client.over_cap():
                unjudged.extend(cells)
                continue
            await _relieve_pressure(ctx, client, spec)
            if await _judge_cell(ctx, metrics, spec, cells, usage):
                progress.advance(len(cells))
            else:
                unjudged.extend(cells)

    with bar(f"judge {spec.model}", sum(len(cells) for cells in todo.values()), ctx.quiet) as progress:
        # enough workers to keep the call cap busy (a metric makes up to 6 + k calls in sequence)
        await asyncio.gather(*(worker(progress) for _ in range(max(1, spec.concurrency * 2))))
    if unjudged:
        cap = f"${usage.cost_usd or 0.0:.4f}, the --max-judge-cost cap (${client.cost_cap_usd:.4f})"
        ctx.note(f"judging stopped at {cap}: {len(unjudged)} judge cells not judged", STAGE)
        ctx.log.event(Event.JUDGE_COST_CAP, STAGE, spec.model, cost_usd=usage.cost_usd, cells_left=len(unjudged))


async def _judge_cell(ctx: RunContext, metrics: dict, spec: JudgeSpec, cells: list[Cell], usage: Usage) -> bool:
    """Score one cell (and its twins that share the key); False when the cost cap refused a call and the cell stays unjudged."""
    cell = cells[0]
    cell_usage = Usage()
    current_cell.set(cell_usage)  # this task's judge calls are counted here
    try:
        result = await asyncio.wait_for(metrics[cell.metric].ascore(**cell.inputs), timeout=_metric_timeout(spec, cell))
        value, cause, message = _value(result.value)
    except Exception as error:  # failures are data: NaN plus a recorded cause
        if _caused_by(error, CostCapReached):
            usage.add(cell_usage)
            return False
        value, cause, message = None, classify(error), f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
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
