"""The judge LLM as RAGAS sees it: LiteLLM behind one completion function that is bounded, retried and accounted.

RAGAS 0.4's metric collections have no concurrency limit, no HTTP retries and no usage hook that
works with llm_factory judges (measured against ragas 0.4.3 and LiteLLM 1.110; see README "With a judge"), so every judge call
goes through `JudgeClient.complete`: at most `concurrency` calls in flight, exponential backoff
with jitter on 429 (honouring Retry-After), 5xx, timeouts and connection errors, and tokens and
cost added to the metric cell that made the call. ragas and litellm are imported lazily (seconds each).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import functools
import json
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .backends.ollama import normalize_host
from .redact import redact

TEMPERATURE, TOP_P = 0.01, 0.1  # ragas's deterministic defaults, part of the judge's identity


@dataclass(frozen=True)
class JudgeSpec:
    model: str  # LiteLLM name: gpt-4o-mini, ollama_chat/NAME, openai/NAME
    embeddings: str  # LiteLLM embedding model for answer_relevancy
    base_url: str | None  # api_base for openai/ and ollama_chat/ judges
    concurrency: int  # judge calls in flight, at most (the adaptive limit's ceiling)
    timeout_s: float  # per call
    retries: int  # HTTP retries per call (429, 5xx, timeout, connection)
    parse_retries: int  # re-asks when the judge's JSON does not parse
    max_tokens: int  # small judges need >= 2048 or they stop mid-JSON
    num_ctx: int | None = None  # for an Ollama judge: its prompts are 1.7-5.8 k characters before contexts
    metric_timeout_s: dict[str, float] = field(default_factory=dict)  # per metric, over all its calls; else derived from timeout_s
    metric_parse_retries: dict[str, int] = field(default_factory=dict)  # per metric; else parse_retries
    repeats: int = 1  # independent judgements per cell (--judge-repeats): measures the judge's own noise; not part of the identity
    start_concurrency: int | None = None  # where the adaptive limit starts; None: at the ceiling

    @property
    def memory_managed(self) -> bool:
        """An Ollama judge is loaded and unloaded by ragsweep, alone in memory after generation. Any other judge (a cloud
        API, a server at a URL) holds its memory whether it is asked or not: it judges while the LLMs answer."""
        return self.model.startswith("ollama")

    @property
    def identity(self) -> str:
        """What makes two judgements comparable: part of every judge cache key."""
        return json.dumps(
            {
                "model": self.model,
                "embeddings": self.embeddings,
                "base_url": redact(self.base_url) if self.base_url else None,  # a rotated password keeps the cache
                "max_tokens": self.max_tokens,
                "temperature": TEMPERATURE,
                "top_p": TOP_P,
                "num_ctx": self.num_ctx,
            },
            sort_keys=True,
        )


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: LiteLLM does not know this model's price

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


current_cell: contextvars.ContextVar[Usage] = contextvars.ContextVar("current_cell")  # set per metric cell task


class CostCapReached(Exception):
    """--max-judge-cost: the next call would start at or above the cap, so it is not made."""


@functools.cache
def quiet_litellm():
    """litellm, imported once and told not to print its 'Provider List' banners (they flood cron mail, --quiet or not).

    Once: setLevel clears every logger's cache, which cost 0.5 ms of each judge call when it ran per call."""
    import litellm

    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    return litellm


@functools.cache
def schemas_built_once() -> None:
    """ragas (to write its prompt) and instructor (to ask for JSON) each build the response model's JSON schema on every
    judge call, through pydantic's model_json_schema: about a tenth of the harness's CPU per call. A class's schema never
    changes, so it is built once per class and arguments, and each caller gets its own copy (callers may edit it)."""
    from pydantic import BaseModel

    build = BaseModel.model_json_schema.__func__
    built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # classes made on the fly are not kept alive

    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            key = (args, tuple(sorted(kwargs.items())))
            schemas = built.setdefault(cls, {})
            if key not in schemas:
                schemas[key] = build(cls, *args, **kwargs)
        except TypeError:  # an argument that cannot be a key: build it as pydantic would
            return build(cls, *args, **kwargs)
        return copy.deepcopy(schemas[key])

    BaseModel.model_json_schema = classmethod(model_json_schema)


def price_per_token(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token from LiteLLM's local price list; None when it does not know the model."""
    try:
        info = quiet_litellm().get_model_info(model)
    except Exception:  # LiteLLM raises for an unmapped model
        return None
    if info.get("input_cost_per_token") is None:
        return None
    return info["input_cost_per_token"], info.get("output_cost_per_token") or 0.0


class AdaptiveGate:
    """Calls in flight under a limit that adapts as TCP's window does: slow start (+1 per success, so it doubles each round)
    until the first 429 or timeout, then additive increase (+1 per round of `limit` successes); a 429 or a timeout halves
    it, at most once per round (one burst of refusals halves once). `ceiling` is never passed."""

    def __init__(self, start: int, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(min(start, ceiling))
        self.in_flight = self.peak = self.throttled = 0
        self._slow_start = True
        self.on_change: Callable[[int, int, str], None] = lambda before, after, cause: None  # the stage logs each cut
        self._calls_since_cut = 0
        self._condition: asyncio.Condition | None = None

    @property
    def capacity(self) -> int:
        return max(1, int(self.limit))

    def _wakeup(self) -> asyncio.Condition:
        if self._condition is None:  # created inside the running loop
            self._condition = asyncio.Condition()
        return self._condition

    async def __aenter__(self) -> None:
        async with self._wakeup():
            await self._wakeup().wait_for(lambda: self.in_flight < self.capacity)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    async def __aexit__(self, *exc) -> None:
        async with self._wakeup():
            self.in_flight -= 1
            self._wakeup().notify_all()

    def succeeded(self) -> None:
        self._calls_since_cut += 1
        if self.limit < self.ceiling:
            self.limit = min(self.ceiling, self.limit + (1 if self._slow_start else 1 / self.capacity))

    def refused(self, cause: str) -> None:
        """A 429 or a timeout: the provider wants fewer calls at once."""
        self.throttled += 1
        self._slow_start = False
        if self._calls_since_cut >= self.capacity or self.capacity == 1:
            self.cut(self.capacity // 2, cause)

    def cut(self, target: int, cause: str) -> int:
        """Lower the limit to `target` (at least 1); calls in flight finish, new ones wait until they are under it."""
        before = self.capacity
        self.limit, self._calls_since_cut = float(max(1, target)), 0
        if self.capacity != before:
            self.on_change(before, self.capacity, cause)
        return self.capacity


@dataclass
class JudgeClient:
    spec: JudgeSpec
    cost_cap_usd: float | None = None  # --max-judge-cost: checked before every call
    spent_usd: float = 0.0  # what this stage's calls cost so far
    gate: AdaptiveGate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.gate = AdaptiveGate(self.spec.start_concurrency or self.spec.concurrency, self.spec.concurrency)

    @property
    def capacity(self) -> int:
        return self.gate.capacity

    def over_cap(self) -> bool:
        return self.cost_cap_usd is not None and self.spent_usd >= self.cost_cap_usd

    async def halve(self) -> int:
        """Memory pressure beside a local judge: half the calls in flight for the rest of the stage."""
        self.gate.ceiling = max(1, self.capacity // 2)
        return self.gate.cut(self.gate.ceiling, "memory pressure")

    async def complete(self, **kwargs: Any) -> Any:
        """The `client` instructor calls: one bounded, retried, accounted litellm.acompletion."""
        response = await self._bounded(self._capped(quiet_litellm().acompletion), **kwargs)
        usage = getattr(response, "usage", None)
        cost = _cost_of(response)
        self.spent_usd += cost or 0.0
        cell = current_cell.get(None)
        if cell is not None:
            cell.add(Usage(1, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0, cost))
        return response

    def _capped(self, call):
        """The call, refused once --max-judge-cost is spent; checked inside the gate, so the overshoot is at most the calls in flight."""

        async def capped(*args: Any, **kwargs: Any) -> Any:
            if self.over_cap():
                raise CostCapReached(f"${self.spent_usd:.4f} spent, the cap is ${self.cost_cap_usd:.4f}")
            return await call(*args, **kwargs)

        return capped

    async def _bounded(self, call, *args: Any, **kwargs: Any) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable), stop=stop_after_attempt(self.spec.retries + 1), wait=_wait_retry_after, reraise=True
        )
        async for attempt in retrying:
            with attempt:
                async with self.gate:
                    try:
                        result = await call(*args, **kwargs)
                    except Exception as error:
                        if classify(error) in {"rate_limit", "timeout"}:
                            self.gate.refused(classify(error))
                        raise
                    self.gate.succeeded()
                    return result

    def metrics(self) -> dict[str, Any]:
        """The four RAGAS metrics, each bound to this client (built once, called per sample)."""
        from ragas.embeddings import LiteLLMEmbeddings
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, ContextPrecision, ContextRecall, Faithfulness

        schemas_built_once()
        spec = self.spec
        extra: dict[str, Any] = {}
        if spec.base_url:
            # LiteLLM's async transports refuse credentials in the URL ("Connection error", or "Cannot combine
            # AUTHORIZATION header with ... credentials encoded in URL"): they travel as a Basic header instead
            extra["api_base"], headers = without_credentials(normalize_host(spec.base_url) if spec.memory_managed else spec.base_url)
            if headers:
                extra["extra_headers"] = headers
        if spec.base_url and spec.model.startswith("openai/"):
            extra["api_key"] = os.environ.get("OPENAI_API_KEY") or "not-needed"  # local OpenAI-compatible servers ignore it
        if spec.model.startswith("ollama"):
            extra.update(num_ctx=spec.num_ctx, keep_alive="30m")

        def llm_for(metric: str):
            re_asks = spec.metric_parse_retries.get(metric, spec.parse_retries)
            return llm_factory(
                spec.model,
                provider="litellm",
                client=self.complete,
                adapter="instructor",
                max_tokens=spec.max_tokens,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                max_retries=re_asks + 1,
                num_retries=0,
                timeout=spec.timeout_s,
                **extra,
            )

        client = self

        class BoundedEmbeddings(LiteLLMEmbeddings):
            async def aembed_text(self, text: str, **kwargs: Any):
                return await client._bounded(super().aembed_text, text, **kwargs)

            async def aembed_texts(self, texts: list[str], **kwargs: Any):
                return await client._bounded(super().aembed_texts, texts, **kwargs)

        embedding_extra = {k: v for k, v in extra.items() if k in {"api_base", "api_key", "extra_headers"}}
        embeddings = BoundedEmbeddings(model=spec.embeddings, timeout=int(spec.timeout_s), max_retries=0, **embedding_extra)
        return {
            "faithfulness": Faithfulness(llm=llm_for("faithfulness")),
            "answer_relevancy": AnswerRelevancy(llm=llm_for("answer_relevancy"), embeddings=embeddings),
            "context_precision": ContextPrecision(llm=llm_for("context_precision")),
            "context_recall": ContextRecall(llm=llm_for("context_recall")),
        }


def without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """(the URL without its user and password, the Authorization header that carries them); no userinfo: (url, {})."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


def _cost_of(response: Any) -> float | None:
    """USD of one call, as LiteLLM priced it while logging the call (asking completion_cost again doubled ~3 ms a call);
    None when it does not know the model's price: cost stays unknown, not zero."""
    cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    return float(cost) if isinstance(cost, (int, float)) else None


def classify(error: BaseException) -> str:
    """Why a metric failed, from the error and what caused it: timeout, rate_limit, server_error, parse_error or undefined."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__ or getattr(error, "last_exception", None)
    for item in chain:
        name = type(item).__name__
        status = getattr(item, "status_code", None)
        if isinstance(item, (asyncio.TimeoutError, TimeoutError)) or name in {"Timeout", "APITimeoutError"}:
            return "timeout"
        if name == "RateLimitError" or status == 429:
            return "rate_limit"
        if (isinstance(status, int) and status >= 500) or name in {"InternalServerError", "ServiceUnavailableError", "APIConnectionError"}:
            return "server_error"
    if any(
        type(item).__name__ in {"InstructorRetryException", "ValidationError", "JSONDecodeError", "IncompleteOutputException"}
        for item in chain
    ):
        return "parse_error"
    return "undefined"


def _is_retryable(error: BaseException) -> bool:
    return classify(error) in {"timeout", "rate_limit", "server_error"}


def _wait_retry_after(retry_state) -> float:
    """Retry-After when the server sends one (capped at 60 s), else exponential backoff with jitter."""
    error = retry_state.outcome.exception() if retry_state.outcome else None
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    try:
        return min(float(headers.get("retry-after")), 60.0)
    except (TypeError, ValueError):
        return wait_exponential_jitter(initial=0.5, max=20.0)(retry_state)
