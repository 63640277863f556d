"""Plan stage: resolve every model before any work, and say what the run will cost.

Everything that can fail fast does so here (unknown model, wrong kind, missing package), so an
overnight run never dies at 3 a.m. on a typo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from . import fmt
from .backends.base import Backend, ModelInfo
from .config import Settings
from .inflight import MAX_IN_FLIGHT
from .judge_client import JudgeSpec, price_per_token
from .platform import Budget, PlatformConfig
from .retrievers import BASELINES, describe_retriever, needs_model
from .store import Store
from .terminal import plain, without_controls

DEFAULT_ANSWER_S = 3.0  # measured: 2-4 s per answer for the demo's tiny LLMs on 2 CPU cores
DEFAULT_LOAD_S = 8.0  # a spawned model process: interpreter, torch or llama.cpp, weights
WEIGHTS_TO_RESIDENT = 1.25  # resident size / file size at 4k context (Ollama's /api/ps sizes: 4.7 GB qwen2.5:7b file -> 5.6 GB)
RUNNER_OVERHEAD = 0.4e9  # CUDA context and compute buffer of a runner process


BYTES_PER_TOKEN = 3  # an upper bound on tokens from UTF-8 bytes: English runs ~4 bytes a token, a CJK character 3 bytes and ~1 token
MIN_SIZED_CTX = 2048  # a sized num_ctx never goes below Ollama's old default
DEFAULT_CTX = 4096  # where the model's own context length is unknown (the local backend): llama.cpp gets this

JUDGE_PROMPT_TOKENS = 1200  # per judge call: ragas's prompt (1.7-5.8 k characters) plus the passages
JUDGE_COMPLETION_TOKENS = 150  # per judge call: a small JSON object


@dataclass
class Plan:
    retrievers: list[ModelInfo]
    llms: list[ModelInfo]
    questions: int
    chunks: int
    judge: JudgeSpec | None = None
    top_k: int = 3
    cached_embeddings: dict[str, int] = field(default_factory=dict)
    answer_seconds: dict[str, float] = field(default_factory=dict)
    expected_bytes: dict[str, int] = field(default_factory=dict)  # memory each model will take, for the fit check
    splits_across_cards: bool = False  # the backend can spread one model over several cards (Ollama)
    boxes: dict[str, Budget] = field(default_factory=dict)  # a cluster's boxes and their memory (empty: this machine)
    num_ctx: dict[str, int] = field(default_factory=dict)  # each LLM's context window: the setting, or sized to fit the prompts
    notes: list[str] = field(default_factory=list)  # what the backend wants the user to know before the run

    @classmethod
    def from_dict(cls, data: dict[str, Any], judge: JudgeSpec | None) -> Plan:
        """The plan a stored run was made with (for --retry-failed)."""
        models = lambda rows: [ModelInfo(**row) for row in rows]  # noqa: E731
        return cls(models(data["retrievers"]), models(data["llms"]), data["questions"], data["chunks"], judge, data.get("top_k", 3))

    @property
    def judge_calls(self) -> int:
        """Judge LLM calls: 6 + k per sample (faithfulness 2, answer_relevancy 3, precision k, recall 1), times the repeats."""
        return self.samples * (6 + self.top_k) * self.judge.repeats if self.judge else 0

    def judge_cost_usd(self) -> float | None:
        return judge_cost_usd(self.judge, self.judge_calls) if self.judge else None

    @property
    def samples(self) -> int:
        return len(self.retrievers) * len(self.llms) * self.questions

    @property
    def model_loads(self) -> int:
        """E + L: each model once (the oracle and closed-book baselines load nothing)."""
        return sum(1 for r in self.retrievers if r.name not in BASELINES) + len(self.llms)

    @property
    def estimated_s(self) -> float:
        answers = sum(self.answer_seconds.get(llm.name, DEFAULT_ANSWER_S) * len(self.retrievers) * self.questions for llm in self.llms)
        return answers + DEFAULT_LOAD_S * self.model_loads

    def as_dict(self) -> dict[str, Any]:
        return {
            "retrievers": [m.as_dict() for m in self.retrievers],
            "llms": [m.as_dict() for m in self.llms],
            "questions": self.questions,
            "chunks": self.chunks,
            "samples": self.samples,
            "model_loads": self.model_loads,
            "estimated_s": round(self.estimated_s, 1),
            "top_k": self.top_k,
            "judge": self.judge.model if self.judge else None,
            "judge_identity": self.judge.identity if self.judge else None,  # what --retry-failed must match
            "judge_calls": self.judge_calls,
            "num_ctx": self.num_ctx,
        }


def make_plan(
    backend: Backend,
    store: Store,
    retriever_names: list[str],
    llm_names: list[str],
    questions: int,
    chunks: int,
    judge: JudgeSpec | None = None,
    top_k: int = 3,
    generation_concurrency: int | None = None,
    num_ctx: int | None = None,
    longest_prompt_bytes: int = 0,
    max_tokens: int = 48,
) -> Plan:
    backend.check()
    retrievers = [describe_retriever(backend, name) for name in retriever_names]
    llms = [backend.describe(name, "llm") for name in llm_names]
    plan = Plan(retrievers, llms, questions, chunks, judge, top_k, splits_across_cards=backend.splits_across_cards)
    plan.num_ctx = context_sizes(llms, num_ctx, longest_prompt_bytes, max_tokens)
    plan.notes = backend.plan_notes(retrievers + llms) + [in_flight_note(backend, generation_concurrency)]
    plan.notes += context_notes(plan, num_ctx, longest_prompt_bytes, max_tokens)
    plan.boxes = backend.budgets()
    for retriever in retrievers:
        if needs_model(retriever.name):
            plan.cached_embeddings[retriever.name] = store.cached_embedding_count(retriever.digest)
    for llm in llms:
        plan.answer_seconds[llm.name] = store.mean_answer_seconds(llm.digest) or DEFAULT_ANSWER_S
    slots = generation_concurrency or 1 if backend.serves_concurrently else 1
    for model in retrievers + llms:
        if model.size_bytes:
            # the resident-size ratio holds one slot's KV cache at 4k; each further slot holds its own (num_ctx tokens)
            per_token = model.details.get("kv_bytes_per_token") or 0
            more_slots = per_token * plan.num_ctx[model.name] * (slots - 1) if model.kind == "llm" else 0
            plan.expected_bytes[model.name] = (
                store.loaded_bytes(model.name) or int(model.size_bytes * WEIGHTS_TO_RESIDENT + RUNNER_OVERHEAD)
            ) + more_slots
    return plan


def context_sizes(llms: list[ModelInfo], setting: int | None, longest_prompt_bytes: int, max_tokens: int) -> dict[str, int]:
    """num_ctx per LLM: the setting where the user gave one; else, where the server says the model's own context length
    (Ollama's /api/show), room for the longest prompt this run can build plus the answer, in steps of 1024 from 2048;
    else the default 4096."""
    if setting:
        return {llm.name: setting for llm in llms}
    need = tokens_needed(longest_prompt_bytes, max_tokens)
    sized = max(MIN_SIZED_CTX, -(-need // 1024) * 1024)
    return {llm.name: min(sized, llm.details["context_length"]) if llm.details.get("context_length") else DEFAULT_CTX for llm in llms}


def tokens_needed(longest_prompt_bytes: int, max_tokens: int) -> int:
    """The context the longest prompt and its answer take, estimated from the prompt's UTF-8 bytes."""
    return longest_prompt_bytes // BYTES_PER_TOKEN + max_tokens


def context_notes(plan: Plan, setting: int | None, longest_prompt_bytes: int, max_tokens: int) -> list[str]:
    """The plan says how num_ctx was chosen, and which LLM cannot take the longest prompt at all."""
    sized = {llm.name: plan.num_ctx[llm.name] for llm in plan.llms if llm.details.get("context_length")}
    if setting or not sized:
        return []
    need = tokens_needed(longest_prompt_bytes, max_tokens)
    notes = [
        f"num_ctx sized per LLM for the longest prompt (~{need - max_tokens} tokens, estimated) + max_tokens {max_tokens}: "
        + ", ".join(f"{name} {size}" for name, size in sized.items())
        + " (set num_ctx to choose)"
    ]
    short = [name for name, size in sized.items() if size < need]
    if short:
        notes.append(f"{', '.join(short)}: the longest prompts exceed the model's own context and will fail as context overflow")
    return notes


def in_flight_note(backend: Backend, generation_concurrency: int | None) -> str:
    """How many generation requests each LLM gets at once, and who decides."""
    if not backend.serves_concurrently:
        return f"generation: one request at a time per LLM ({backend.name} backend: one model process answers one prompt at a time)"
    if generation_concurrency:
        return f"generation: {generation_concurrency} requests in flight per LLM (generation_concurrency)"
    return (
        f"generation: requests in flight per LLM found by measurement (1 to {MAX_IN_FLIGHT}; the server's slots decide: "
        "Ollama's OLLAMA_NUM_PARALLEL, llama-server --parallel, vLLM's batch); --generation-concurrency N fixes it"
    )


def fit(need: int | None, budget: Budget) -> str:
    """Whether a model fits the card it would land on; or, where the backend splits a model across cards (Ollama), all of them."""
    if need is None:
        return "-"
    if need < budget.card_bytes:
        return f"yes (~{need / 1e9:.1f} GB)"
    if budget.cards > 1 and need < budget.capacity_bytes:
        return f"yes, split over {budget.cards} cards (~{need / 1e9:.1f} GB > {budget.card_bytes / 1e9:.1f} GB a card)"
    return f"NO (~{need / 1e9:.1f} GB > {budget.card_bytes / 1e9:.1f} GB a card): a smaller num_ctx or partial offload (num_gpu) may fit"


def fit_on_boxes(need: int | None, boxes: dict[str, Budget]) -> str:
    """The fit on each box of a cluster: a model that fits only the bigger boxes is moved there if it runs out of memory."""
    if need is None:
        return "-"
    fits = {box: not fit(need, budget).startswith("NO") for box, budget in boxes.items()}
    yes, no = [box for box, ok in fits.items() if ok], [box for box, ok in fits.items() if not ok]
    if not no:
        return f"yes on every box (~{need / 1e9:.1f} GB)"
    largest = max(budget.capacity_bytes for budget in boxes.values())
    if not yes:
        return f"NO on any box (~{need / 1e9:.1f} GB > {largest / 1e9:.1f} GB, the largest): partial offload (num_gpu) may fit"
    return f"yes on {', '.join(yes)}; NO on {', '.join(no)} (~{need / 1e9:.1f} GB)"


def print_plan(plan: Plan, platform: PlatformConfig, console: Console) -> None:
    table = Table(title="plan: models", title_justify="left")
    for column in ("model", "kind", "digest", "size", "license", "fits memory", "cache / speed"):
        table.add_column(column, no_wrap=column != "license")
    for model in plan.retrievers + plan.llms:
        need = plan.expected_bytes.get(model.name)
        fits = fit_on_boxes(need, plan.boxes) if plan.boxes else fit(need, Budget.of(platform, plan.splits_across_cards))
        cached = (
            f"{plan.cached_embeddings[model.name]} vectors"
            if model.name in plan.cached_embeddings
            else f"~{plan.answer_seconds[model.name]:.1f} s/answer"
            if model.name in plan.answer_seconds
            else "-"
        )
        table.add_row(
            *map(
                plain,
                (
                    model.name,
                    model.kind,
                    model.digest[:12],
                    "-" if model.size_bytes is None else f"{fmt.gb(model.size_bytes)} GB",
                    model.license or "-",
                    fits,
                    cached,
                ),
            )
        )
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {without_controls(note)}", highlight=False, markup=False)
    console.print(
        f"matrix: {len(plan.retrievers)} retrievers × {len(plan.llms)} LLMs × {plan.questions} questions = {plan.samples} samples; "
        f"{plan.chunks} chunks; model loads: {plan.model_loads} (E + L); "
        f"platform: {platform.device} ({platform.device_name}), memory {platform.memory_total_bytes / 1e9:.1f} GB; "
        f"estimated time: {fmt.duration(plan.estimated_s)} (cached work is skipped)",
        markup=False,
    )
    if plan.judge:
        cost = plan.judge_cost_usd()
        console.print(
            f"judge: {without_controls(plan.judge.model)} (embeddings {without_controls(plan.judge.embeddings)}), "
            f"{plan.samples} samples × (6 + k={plan.top_k})"
            f"{f' × {plan.judge.repeats} repeats' if plan.judge.repeats > 1 else ''} = {plan.judge_calls} judge calls "
            f"+ {2 * plan.samples * plan.judge.repeats} embedding calls, {judge_schedule(plan.judge)}; "
            + (
                f"estimated cost ≤ ${cost:.2f} (≈{JUDGE_PROMPT_TOKENS} prompt + {JUDGE_COMPLETION_TOKENS} completion tokens a "
                "call; cached cells are free)"
                if cost is not None
                else "cost unknown to LiteLLM (local judge: free)"
            ),
            markup=False,
        )


JUDGE_CALLS = {"faithfulness": 2, "answer_relevancy": 3, "context_recall": 1}  # context_precision: one call per passage


def judge_calls(metric: str, passages: int) -> int:
    """The judge LLM calls one cell of `metric` makes (answer_relevancy adds an embedding call)."""
    return JUDGE_CALLS.get(metric, passages)


def judge_cost_usd(judge: JudgeSpec, calls: int) -> float | None:
    """A rough estimate from LiteLLM's price list; None when it does not know the model."""
    price = price_per_token(judge.model)
    if price is None:
        return None
    return calls * (JUDGE_PROMPT_TOKENS * price[0] + JUDGE_COMPLETION_TOKENS * price[1])


def judge_schedule(judge: JudgeSpec) -> str:
    if judge.memory_managed:
        return f"after generation, alone in memory, at most {judge.concurrency} in flight"
    start = judge.start_concurrency or judge.concurrency
    return f"while the LLMs answer, {start} calls in flight to start, adapting to rate limits up to {judge.concurrency}"


def print_settings(settings: Settings, console: Console) -> None:
    """--dry-run: every setting and where its value came from, so a layer that was overridden shows why."""
    console.print("settings (flags > environment/.env > config file > built-in defaults):", highlight=False)
    for key, value in settings.public_dict().items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        console.print(without_controls(f"  {key}: {shown} ({settings.origin(key)})"), highlight=False, markup=False)
