"""Generate stage: per LLM, one answer for every (embedding model, question) pair.

The LLM is loaded once for all of them (E + L loads, never E x L). Answers are cached by
(LLM digest, options, prompt hash), so two retrievers that return the same passages share one
answer, and a resumed run asks only for what is missing. Each answer is written as it completes;
a failed answer is a row with its cause, never the end of the sweep.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .backends.base import ModelInfo, Prompt
from .errors import ModelCallError, ModelUnavailableError
from .events import Event
from .interrupts import raise_if_signalled
from .lifecycle import Resident, resident_model
from .metrics import exact_match, token_f1
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
    options = ctx.generation_options
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
    options = ctx.generation_options
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
    with bar(f"answer {llm.name}", len(pending), ctx.quiet) as progress:
        for key, work in pending.items():
            raise_if_signalled()
            try:
                result = resident.call("generate", work.prompt)
            except ModelUnavailableError:
                raise  # the model cannot come back: the rest of its work fails (handled by the caller)
            except ModelCallError as error:
                _fail(ctx, llm, work.samples, error)
            else:
                ctx.model_call_s += result.seconds
                if not resident.degraded:  # an answer made with less context is not what the config asked for: not cached
                    ctx.store.put_answer_cache(key, llm.digest, result.text, result.prompt_tokens, result.completion_tokens, result.seconds)
                answer = {
                    "text": result.text,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "seconds": result.seconds,
                }
                for retriever, question in work.samples:
                    _store_answer(ctx, retriever, llm, question, answer, cached_hit=False)
            progress.advance()


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
        },
    )
