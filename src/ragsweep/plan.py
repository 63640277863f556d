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
from .judge_client import JudgeSpec, price_per_token
from .platform import Budget, PlatformConfig
from .retrievers import BASELINES, describe_retriever, needs_model
from .store import Store

DEFAULT_ANSWER_S = 3.0  # measured: 2-4 s per answer for the demo's tiny LLMs on 2 CPU cores
DEFAULT_LOAD_S = 8.0  # a spawned model process: interpreter, torch or llama.cpp, weights
WEIGHTS_TO_RESIDENT = 1.25  # resident size / file size at 4k context (Ollama's /api/ps sizes: 4.7 GB qwen2.5:7b file -> 5.6 GB)
RUNNER_OVERHEAD = 0.4e9  # CUDA context and compute buffer of a runner process


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
        """A rough estimate from LiteLLM's price list; None when it does not know the model."""
        if not self.judge:
            return None
        price = price_per_token(self.judge.model)
        if price is None:
            return None
        return self.judge_calls * (JUDGE_PROMPT_TOKENS * price[0] + JUDGE_COMPLETION_TOKENS * price[1])

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
) -> Plan:
    backend.check()
    retrievers = [describe_retriever(backend, name) for name in retriever_names]
    llms = [backend.describe(name, "llm") for name in llm_names]
    plan = Plan(retrievers, llms, questions, chunks, judge, top_k, splits_across_cards=backend.splits_across_cards)
    plan.notes = backend.plan_notes(retrievers + llms)
    plan.boxes = backend.budgets()
    for retriever in retrievers:
        if needs_model(retriever.name):
            plan.cached_embeddings[retriever.name] = store.cached_embedding_count(retriever.digest)
    for llm in llms:
        plan.answer_seconds[llm.name] = store.mean_answer_seconds(llm.digest) or DEFAULT_ANSWER_S
    for model in retrievers + llms:
        if model.size_bytes:
            plan.expected_bytes[model.name] = store.loaded_bytes(model.name) or int(
                model.size_bytes * WEIGHTS_TO_RESIDENT + RUNNER_OVERHEAD
            )
    return plan


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
            model.name,
            model.kind,
            model.digest[:12],
            "-" if model.size_bytes is None else f"{fmt.gb(model.size_bytes)} GB",
            model.license or "-",
            fits,
            cached,
        )
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(
        f"matrix: {len(plan.retrievers)} retrievers × {len(plan.llms)} LLMs × {plan.questions} questions = {plan.samples} samples; "
        f"{plan.chunks} chunks; model loads: {plan.model_loads} (E + L); "
        f"platform: {platform.device} ({platform.device_name}), memory {platform.memory_total_bytes / 1e9:.1f} GB; "
        f"estimated time: {fmt.duration(plan.estimated_s)} (cached work is skipped)"
    )
    if plan.judge:
        cost = plan.judge_cost_usd()
        console.print(
            f"judge: {plan.judge.model} (embeddings {plan.judge.embeddings}), {plan.samples} samples × (6 + k={plan.top_k})"
            f"{f' × {plan.judge.repeats} repeats' if plan.judge.repeats > 1 else ''} = {plan.judge_calls} judge calls "
            f"+ {2 * plan.samples * plan.judge.repeats} embedding calls, at most {plan.judge.concurrency} in flight; "
            + (
                f"estimated cost ≤ ${cost:.2f} (≈{JUDGE_PROMPT_TOKENS} prompt + {JUDGE_COMPLETION_TOKENS} completion tokens a "
                "call; cached cells are free)"
                if cost is not None
                else "cost unknown to LiteLLM (local judge: free)"
            )
        )


def print_settings(settings: Settings, console: Console) -> None:
    """--dry-run: every setting and where its value came from, so a layer that was overridden shows why."""
    console.print("settings (flags > environment/.env > config file > built-in defaults):", highlight=False)
    for key, value in settings.public_dict().items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        console.print(f"  {key}: {shown} ({settings.origin(key)})", highlight=False, markup=False)
