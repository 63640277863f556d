"""Generate stage: per LLM, one answer for every (embedding model, question) pair.

The LLM is loaded once for all of them (E + L loads, never E x L). Answers are cached by
(LLM digest, options, prompt hash), so two retrievers that return the same passages share one
answer, and a resumed run asks only for what is missing. Each answer is written as it completes;
a failed answer is a row with its cause, never the end of the sweep.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from .backends.base import Generation, ModelInfo, Prompt
from .errors import ModelCallError
from .events import Event
from .fmt import gb
from .inflight import Found, InFlightLimit, answer_concurrently, in_flight_limit
from .lifecycle import Resident, resident_model
from .metrics import exact_match, token_f1
from .nvml import device_used_bytes
from .progress import bar
from .prompt import build_prompt
from .run import RunContext
from .testset import Question

STAGE = "generate"


@dataclass
class PendingAnswer:
    """One prompt still to answer, and every sample that needs its answer."""

    prompt: Prompt
    samples: list[tuple[str, Question]] = field(default_factory=list)  # (retriever, question)


def generate(ctx: RunContext, llm: ModelInfo, retrievers: list[str], questions: list[Question]) -> None:
    ctx.log.event(Event.STAGE_START, STAGE, llm.name)
    options = ctx.generation_options(llm.name)
    pending = pending_answers(ctx, llm, retrievers, questions, store_cached=True)
    generated = len(pending)
    _take_prefilled(ctx, llm, pending)
    if pending:
        try:
            with resident_model(ctx.backend, llm, STAGE, ctx.log, options) as resident:
                _answer_all(ctx, resident, pending)
        except ModelCallError as error:  # could not (re)load: the rest of this model's work fails, the sweep goes on
            _fail_unanswered(ctx, llm, pending, error)
    else:
        ctx.log.event(Event.MODEL_SKIPPED, STAGE, llm.name, reason="all answers cached")
    ctx.log.event(Event.STAGE_END, STAGE, llm.name, answers=len(retrievers) * len(questions), generated=generated)


def pending_answers(
    ctx: RunContext, llm: ModelInfo, retrievers: list[str], questions: list[Question], store_cached: bool = False
) -> dict[str, PendingAnswer]:
    """Every prompt the LLM still has to answer (a cache miss), keyed by its cache key, with the samples that need it.

    With `store_cached`, the samples whose answer is cached are stored as they are found.
    """
    options = ctx.generation_options(llm.name)
    pending: dict[str, PendingAnswer] = {}
    for retriever in retrievers:
        contexts = ctx.store.retrievals(ctx.run_id, retriever)
        for question in questions:
            prompt = build_prompt(question.question, contexts[question.id]["contexts"])
            key = hashlib.sha256(f"{llm.digest}|{options.key()}|{prompt.key()}".encode()).hexdigest()
            cached = None if ctx.settings.fresh else ctx.store.cached_answer(key)
            if cached and store_cached:
                _store_answer(ctx, retriever, llm, question, cached, cached_hit=True)
            elif not cached:
                pending.setdefault(key, PendingAnswer(prompt)).samples.append((retriever, question))
    return pending


def _take_prefilled(ctx: RunContext, llm: ModelInfo, pending: dict[str, PendingAnswer]) -> None:
    """Answers a cluster box made but could not cache (degraded settings), and calls that failed there: stored, not asked again."""
    for key in [key for key in pending if key in ctx.prefilled]:
        work, made = pending.pop(key), ctx.prefilled.pop(key)
        if isinstance(made, ModelCallError):
            _fail(ctx, llm, work.samples, made)
        else:
            for retriever, question in work.samples:
                _store_answer(ctx, retriever, llm, question, made, cached_hit=False)


def _answer_all(ctx: RunContext, resident: Resident, pending: dict[str, PendingAnswer]) -> None:
    llm = resident.info
    limit = in_flight_limit(ctx.backend, ctx.settings.generation_concurrency)
    started, answered, tokens = time.monotonic(), 0, 0
    with bar(f"answer {llm.name}", len(pending), ctx.quiet) as progress:
        prompts = {key: work.prompt for key, work in pending.items()}
        for key, outcome in answer_concurrently(lambda prompt: resident.call("generate", prompt), prompts, limit):
            samples = pending[key].samples
            if isinstance(outcome, ModelCallError):
                _fail(ctx, llm, samples, outcome)
            else:
                answered, tokens = answered + 1, tokens + (outcome.completion_tokens or 0)
                _store_generation(ctx, resident, key, samples, outcome)
            progress.advance()
    _log_throughput(ctx, llm, limit, answered, tokens, time.monotonic() - started)


def _store_generation(ctx: RunContext, resident: Resident, key: str, samples: list[tuple[str, Question]], result: Generation) -> None:
    llm = resident.info
    ctx.model_call_s += result.seconds
    # an answer made with less context than configured, or from a prompt that was probably cut, is not cached
    if not resident.degraded and not result.prompt_cut:
        ctx.store.put_answer_cache(key, llm.digest, result.text, result.prompt_tokens, result.completion_tokens, result.seconds)
    answer = {
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "seconds": result.seconds,
        "queued_s": result.queued_s,
        "prompt_cut": result.prompt_cut,
    }
    for retriever, question in samples:
        _store_answer(ctx, retriever, llm, question, answer, cached_hit=False)


def _log_throughput(ctx: RunContext, llm: ModelInfo, limit: InFlightLimit, answered: int, tokens: int, wall_s: float) -> None:
    """What the requests in flight bought: the report's "4 requests in flight, 2.7x one stream" and aggregate rates."""
    found = limit.found()
    ctx.log.event(
        Event.THROUGHPUT,
        STAGE,
        llm.name,
        in_flight=found.in_flight,
        probed=found.probed,
        speedup=None if found.speedup is None else round(found.speedup, 2),
        answers=answered,
        wall_s=round(wall_s, 3),
        answers_per_s=round(answered / wall_s, 3) if wall_s > 0 else None,
        tokens_per_s=round(tokens / wall_s, 2) if wall_s > 0 else None,
        advice=more_slots_advice(
            llm, found, ctx.generation_options(llm.name).num_ctx, ctx.platform.memory_total_bytes, device_used_bytes()
        ),
    )


def more_slots_advice(llm: ModelInfo, found: Found, num_ctx: int, card_bytes: int, used_bytes: int | None) -> str | None:
    """When a probed server answered one request at a time: how to give it more slots, and whether their KV cache fits."""
    per_token = llm.details.get("kv_bytes_per_token")
    if not found.probed or found.in_flight > 1 or not per_token:
        return None
    extra = {slots: per_token * num_ctx * (slots - 1) for slots in (4, 2)}  # each slot beyond the first holds its own KV cache
    if used_bytes is None:  # no device figures: say the cost, not the fit
        return f"set OLLAMA_NUM_PARALLEL=4 on the server; KV cache for 4 × {num_ctx} tokens adds about {gb(extra[4])} GB"
    free = card_bytes - used_bytes
    for slots, more in extra.items():
        if more < free:
            return (
                f"set OLLAMA_NUM_PARALLEL={slots} on the server; KV cache for {slots} × {num_ctx} tokens adds about "
                f"{gb(more)} GB, which fits ({gb(free)} GB free)"
            )
    return f"the server answers one request at a time, and a second slot's KV cache ({gb(extra[2])} GB) would not fit in {gb(free)} GB free"


def _fail(ctx: RunContext, llm: ModelInfo, samples: list[tuple[str, Question]], error: ModelCallError) -> None:
    for retriever, question in samples:
        ctx.store.put_answer(ctx.run_id, retriever, llm.name, question.id, {"error": str(error), "cause": error.cause})
        ctx.log.event(
            Event.SAMPLE_FAILED, STAGE, llm.name, question_id=question.id, embedding_model=retriever, cause=error.cause, message=str(error)
        )
    ctx.count_failures(len(samples))


def _fail_unanswered(ctx: RunContext, llm: ModelInfo, pending: dict[str, PendingAnswer], error: ModelCallError) -> None:
    answered = {(row["embedding_model"], row["question_id"]) for row in ctx.store.samples(ctx.run_id) if row["llm"] == llm.name}
    left = [(r, q) for work in pending.values() for r, q in work.samples if (r, q.id) not in answered]
    for retriever, question in left:
        ctx.store.put_answer(ctx.run_id, retriever, llm.name, question.id, {"error": str(error), "cause": error.cause})
    ctx.note(f"{llm.name}: {len(left)} answers failed — {error}", STAGE)
    ctx.log.event(Event.MODEL_FAILED, STAGE, llm.name, cause=error.cause, message=str(error), samples=len(left))
    ctx.count_failures(len(left), budgeted=False)  # a model that cannot load is skipped, the rest goes on


def _store_answer(ctx: RunContext, retriever: str, llm: ModelInfo, question: Question, answer: dict, cached_hit: bool) -> None:
    seconds = answer["seconds"]
    tokens = answer["completion_tokens"]
    ctx.store.put_answer(
        ctx.run_id,
        retriever,
        llm.name,
        question.id,
        {
            "answer": answer["text"],
            "prompt_tokens": answer["prompt_tokens"],
            "completion_tokens": tokens,
            "latency_s": seconds,
            "tokens_per_s": tokens / seconds if tokens and seconds else None,
            "exact_match": exact_match(answer["text"], question.reference),
            "token_f1": token_f1(answer["text"], question.reference),
            "cached": int(cached_hit),
            "queued_s": answer.get("queued_s"),
            "prompt_cut": int(answer.get("prompt_cut") or 0),
        },
    )
