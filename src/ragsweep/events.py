"""Every event a run writes to events.jsonl and the store, with its fields: the one list to read.

The report, the exit code and resume read these, and people tail events.jsonl from cron, so the
names are constants and the fields are documented here (docs/events.md is generated from this).
Every line carries `schema_version`; a renamed event or field bumps it.
"""

from __future__ import annotations

from enum import StrEnum

EVENTS_SCHEMA_VERSION = 2  # 2: every line says its box
COMMON_FIELDS = (
    "schema_version, event, stage (plan|retrieve|generate|judge or null), model (or null), t (unix seconds), "
    "box (the machine: a cluster box's name, else this host)"
)


class Event(StrEnum):
    STAGE_START = "stage_start"
    STAGE_END = "stage_end"
    MODEL_LOAD = "model_load"
    MODEL_UNLOAD = "model_unload"
    MODEL_SKIPPED = "model_skipped"
    UNLOAD_VERIFIED = "unload_verified"
    MEMORY_NOT_RELEASED = "memory_not_released"
    MEMORY_PRESSURE = "memory_pressure"
    OUT_OF_MEMORY = "out_of_memory"
    RECOVERING = "recovering"
    RETRY = "retry"
    MODEL_FAILED = "model_failed"
    SAMPLE_FAILED = "sample_failed"
    NOTE = "note"
    RUN_STOPPED = "run_stopped"
    JUDGE_COST_CAP = "judge_cost_cap"
    RETRY_FAILED = "retry_failed"
    CLEANUP_FAILED = "cleanup_failed"
    STAGE_MOVED = "stage_moved"
    BOX_LOST = "box_lost"
    BOX_REFUSED = "box_refused"
    THROUGHPUT = "throughput"
    JUDGE_CONCURRENCY = "judge_concurrency"


# What each event means, and the fields it adds to the common ones.
FIELDS: dict[Event, tuple[str, str]] = {
    Event.STAGE_START: ("a stage began for one model (or the judge)", "overlapped (judge: it runs while the LLMs answer)"),
    Event.STAGE_END: (
        "a stage ended for one model",
        "questions | answers, generated | cells, calls, cost_usd, peak_in_flight, throttled, first_call_t (judge)",
    ),
    Event.MODEL_LOAD: (
        "a model is resident",
        "load_s, digest; reason (a reload); recovered_by with num_ctx, num_gpu (LLM) or half_precision, on_cpu (embedding)",
    ),
    Event.MODEL_UNLOAD: ("a model was asked to leave memory", "reason: leftover | memory pressure (absent: end of its stage)"),
    Event.MODEL_SKIPPED: ("a model was not loaded because its work was cached", "reason"),
    Event.UNLOAD_VERIFIED: ("memory came back after an unload", "in_use_bytes"),
    Event.MEMORY_NOT_RELEASED: ("memory did not come back within unload_timeout_s (exit 1)", "message"),
    Event.MEMORY_PRESSURE: (
        "use above the pressure threshold: other models unloaded, work shrunk",
        "used_bytes, threshold_bytes, batch_size, new_batch_size | judge_concurrency, new_judge_concurrency",
    ),
    Event.OUT_OF_MEMORY: (
        "a load ran out of memory (the ladder tries its next step) or an embedding batch did (it is halved)",
        "step (the ladder's step, or 'batch 64 → 32'), message",
    ),
    Event.RECOVERING: ("a call crashed, hung or ran out of memory: reload and one more try", "cause, message"),
    Event.RETRY: ("a backend request is retried with backoff", "cause, attempt, message"),
    Event.MODEL_FAILED: ("a model could not do its stage; its samples failed, the sweep goes on", "cause, message, samples"),
    Event.SAMPLE_FAILED: ("one sample got no answer", "question_id, embedding_model, cause, message"),
    Event.NOTE: ("a line for the report's 'Skipped and failed' section", "message"),
    Event.RUN_STOPPED: ("the run stopped early (failure budget, backend gone); resumable", "reason, message"),
    Event.JUDGE_COST_CAP: ("--max-judge-cost was reached: judging stopped", "cost_usd, cells_left"),
    Event.RETRY_FAILED: ("--retry-failed began re-judging a run's failed cells", ""),
    Event.CLEANUP_FAILED: ("the final unload could not reach the backend", "message"),
    Event.STAGE_MOVED: (
        "a stage ran out of memory on a cluster box: what it did not finish goes to the boxes with more memory",
        "box (where it failed), to (the bigger boxes), cause, message",
    ),
    Event.BOX_LOST: (
        "a cluster box (the event's box) left while it ran this stage: another box redoes only the unfinished work",
        "message",
    ),
    Event.BOX_REFUSED: (
        "a box that joined after the plan has other sources or libraries than the head: its task goes back to the checked boxes",
        "message (the package and both versions)",
    ),
    Event.THROUGHPUT: (
        "an LLM's generation ended: the requests in flight found (or fixed) and what they bought",
        "in_flight, probed, speedup (answers/s against one stream), answers, wall_s, answers_per_s, tokens_per_s",
    ),
    Event.JUDGE_CONCURRENCY: (
        "the judge's calls in flight were cut: a rate limit (429) or a timeout halves them, as does memory pressure",
        "concurrency, new_concurrency, cause",
    ),
}


def markdown() -> str:
    """docs/events.md: the table people read before they grep events.jsonl."""
    lines = [
        "# events.jsonl",
        "",
        f"One JSON object per line, schema version {EVENTS_SCHEMA_VERSION}. Every line has: {COMMON_FIELDS}.",
        "",
        "| event | when | fields |",
        "|---|---|---|",
    ]
    lines += [f"| `{event}` | {when} | {fields or '-'} |" for event, (when, fields) in FIELDS.items()]
    return "\n".join(lines) + "\n"
