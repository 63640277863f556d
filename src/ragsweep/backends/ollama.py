"""Ollama over its HTTP API: the users' main path (a 12 GB card or a Mac).

Every request for a model sends the same `options` (a different num_ctx would make Ollama
reload it) and an explicit keep_alive long enough for the stage; the stage ends with an explicit
unload (empty prompt + keep_alive 0, which also works for embedding models since Ollama 0.3.11).
Unloading is asynchronous: `ensure_clean_gpu_state` polls /api/ps and the device afterwards.
"""

from __future__ import annotations

import difflib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from tenacity import retry, retry_if_exception, wait_exponential_jitter

from ..errors import CONTEXT_OVERFLOW, BackendUnavailableError, ConfigError, ModelCallError, ModelNotFoundError
from ..redact import redact
from .base import Backend, Generation, GenerationOptions, Kind, LoadedInfo, LoadedModel, ModelInfo, Prompt

KEEP_ALIVE = "30m"  # resident through a stage (renewed by each request); freed by Ollama if we die
OOM_MARKERS = (
    "out of memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "vk_error_out_of_device_memory",
    "erroroutofmemory",
    "memory layout cannot be allocated",
    "requires more system memory",
    "unable to load full model on gpu",
)
TRANSIENT = {"busy", "connection", "runner_crash"}  # worth a retry with backoff
# A prompt longer than num_ctx, refused because we send truncate: false (the wording changed across versions)
OVERFLOW_MARKERS = ("exceeds the context length", "exceeds maximum context length", "exceed context window")


def normalize_host(host: str) -> str:
    """OLLAMA_HOST may be '0.0.0.0:11434' or 'host'; the client needs a URL."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = f"http://{host}"
    scheme, rest = host.split("://", 1)
    if rest.startswith("0.0.0.0"):
        rest = "127.0.0.1" + rest[len("0.0.0.0") :]
    if ":" not in rest.split("/")[0]:
        rest = rest.replace("/", ":11434/", 1) if "/" in rest else f"{rest}:11434"
    return f"{scheme}://{rest}"


def classify(status: int, message: str) -> str:
    """The cause recorded for a failed call, from Ollama's status and wording."""
    lowered = message.lower()
    if any(marker in lowered for marker in OOM_MARKERS):
        return "out_of_memory"
    if status == 400 and any(marker in lowered for marker in OVERFLOW_MARKERS):
        return CONTEXT_OVERFLOW
    if status == 503:
        return "busy"
    if (
        "unexpectedly stopped" in lowered
        or "process has terminated" in lowered
        or "error was encountered while running the model" in lowered
    ):
        return "runner_crash"
    return "error"


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, ModelCallError) and error.cause in TRANSIENT


class OllamaBackend(Backend):
    name = "ollama"
    runs_locally = False
    serves_concurrently = True  # OLLAMA_NUM_PARALLEL slots per model; the rest queue on the server
    splits_across_cards = True  # Ollama spreads a model that does not fit one card over several

    def __init__(self, host: str, request_timeout_s: float, down_retry_s: float, retries: int = 3):
        self.client = httpx.Client(base_url=normalize_host(host), timeout=httpx.Timeout(request_timeout_s, connect=5.0))
        self.host = redact(normalize_host(host))  # as shown in messages and stored; the client keeps the real one
        self.retries = retries  # attempts for a busy server or a crashed runner
        self.down_retry_s = down_retry_s  # how long a server that stopped answering is retried
        self._version: str | None = None
        self._tags: dict[str, dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings, device: str) -> OllamaBackend:
        return cls(settings.ollama_host, request_timeout_s=settings.watchdog_s, down_retry_s=settings.backend_retry_s)

    def check(self) -> None:
        try:
            self._version = self.client.get("/api/version", timeout=5.0).raise_for_status().json()["version"]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            raise BackendUnavailableError(
                f"Ollama is not reachable at {self.host} ({type(error).__name__}: {error}) — start it with `ollama serve`, or "
                "pass --ollama-host / set OLLAMA_HOST"
            ) from None

    def describe(self, name: str, kind: Kind) -> ModelInfo:
        tag = name if ":" in name else f"{name}:latest"
        tags = self._list_tags()
        if tag not in tags:
            close = difflib.get_close_matches(tag, list(tags), n=3, cutoff=0.5)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ModelNotFoundError(f"model '{name}' not found at {self.host}{hint} — run: ollama pull {name}")
        show = self.request("/api/show", {"model": tag})
        capabilities = show.get("capabilities") or []
        is_embedding = "embedding" in capabilities
        if kind == "embedding" and not is_embedding:
            raise ConfigError(
                f"--embeddings: '{name}' is not an embedding model (capabilities: {', '.join(capabilities) or 'none'}) — move it to --llms"
            )
        if kind == "llm" and is_embedding:
            raise ConfigError(f"--llms: '{name}' is an embedding model — move it to --embeddings")
        entry = tags[tag]
        license_line = (show.get("license") or "").strip().splitlines()
        model_info = show.get("model_info") or {}
        details = {
            **(entry.get("details") or {}),
            "block_count": _model_fact(model_info, ".block_count"),
            "context_length": _model_fact(model_info, ".context_length"),
            "kv_bytes_per_token": kv_bytes_per_token(model_info),
        }
        return ModelInfo(
            name, kind, entry["digest"], license_line[0][:80] if license_line else None, entry.get("size"), f"{self.host} {tag}", details
        )

    def load(self, info: ModelInfo, options: GenerationOptions | None = None) -> LoadedModel:
        return OllamaModel(self, info, options)

    def loaded(self) -> list[LoadedInfo]:
        rows = self.request("/api/ps", method="GET").get("models") or []
        return [LoadedInfo(row["name"], row.get("size"), row.get("size_vram"), None, _expired(row.get("expires_at"))) for row in rows]

    def unload(self, name: str) -> None:
        try:
            self.request("/api/generate", {"model": name, "keep_alive": 0})
        except ModelCallError as error:  # Ollama < 0.3.11 refuses generate for embedding models
            if "does not support generate" not in str(error):
                raise
            self.request("/api/embed", {"model": name, "keep_alive": 0})

    def versions(self) -> dict[str, str]:
        return {"ollama": self._version or "unknown"}

    def request(self, path: str, body: dict[str, Any] | None = None, method: str = "POST", retry_busy: bool = True) -> dict[str, Any]:
        """One API call, retried with backoff: a busy server or crashed runner a few times, a vanished server for down_retry_s.

        Without `retry_busy` a 503 "server busy" is raised at once: generation lowers its requests in flight and asks again.
        """
        started = time.monotonic()

        def give_up(state) -> bool:
            error = state.outcome.exception()
            if getattr(error, "cause", None) == "busy" and not retry_busy:
                return True
            if getattr(error, "cause", None) == "connection":
                return time.monotonic() - started >= self.down_retry_s
            return state.attempt_number >= self.retries

        def log(state) -> None:
            error = state.outcome.exception()
            self.on_retry(error.cause, str(error), state.attempt_number)

        try:
            return retry(
                retry=retry_if_exception(_is_transient),
                stop=give_up,
                wait=wait_exponential_jitter(multiplier=0.5, max=8.0),
                before_sleep=log,
                reraise=True,
            )(self._request_once)(path, body, method)
        except ModelCallError as error:
            if error.cause == "connection":
                raise BackendUnavailableError(
                    f"Ollama at {self.host} stopped answering ({error}); retried for {self.down_retry_s:.0f} s — finished work "
                    "is saved: start Ollama and run the same command again"
                ) from None
            raise

    def _request_once(self, path: str, body: dict[str, Any] | None, method: str) -> dict[str, Any]:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.TimeoutException:
            raise ModelCallError(f"{path}: no answer from {self.host} within the request timeout", cause="timeout") from None
        except httpx.TransportError as error:
            raise ModelCallError(f"{path}: connection to {self.host} failed ({type(error).__name__})", cause="connection") from None
        if response.status_code == 404 and path in {"/api/show", "/api/generate", "/api/chat", "/api/embed"}:
            raise ModelNotFoundError(f"{_error_text(response)} at {self.host} — run: ollama pull {(body or {}).get('model')}")
        if response.status_code >= 400:
            message = _error_text(response)
            raise ModelCallError(f"{path} {response.status_code}: {message}", cause=classify(response.status_code, message))
        return response.json()

    def _list_tags(self) -> dict[str, dict[str, Any]]:
        if self._tags is None:
            self._tags = {row["name"]: row for row in self.request("/api/tags", method="GET").get("models") or []}
        return self._tags


class OllamaModel(LoadedModel):
    def __init__(self, backend: OllamaBackend, info: ModelInfo, options: GenerationOptions | None):
        self.info = info
        self._backend = backend
        self.tag = info.name if ":" in info.name else f"{info.name}:latest"
        # The same options on every request: a change of num_ctx & co would reload the model.
        self.options = (
            {}
            if options is None
            else {
                "num_ctx": options.num_ctx,
                "num_predict": options.max_tokens,
                "temperature": options.temperature,
                "seed": options.seed,
                "stop": list(options.stop),
            }
        )
        if options is not None and options.num_gpu is not None:
            self.options["num_gpu"] = options.num_gpu
        start = time.perf_counter()
        if info.kind == "embedding":
            reply = backend.request("/api/embed", {"model": self.tag, "input": [], "keep_alive": KEEP_ALIVE})
        else:
            reply = backend.request(
                "/api/chat", {"model": self.tag, "messages": [], "keep_alive": KEEP_ALIVE, "options": self.options, "stream": False}
            )
        self.load_seconds = reply.get("load_duration", 0) / 1e9 or time.perf_counter() - start

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        reply = self._backend.request("/api/embed", {"model": self.tag, "input": texts, "keep_alive": KEEP_ALIVE, "truncate": True})
        return np.asarray(reply["embeddings"], dtype=np.float32), reply.get("total_duration", 0) / 1e9 or time.perf_counter() - start

    def generate(self, prompt: Prompt) -> Generation:
        start = time.perf_counter()
        # truncate: false makes a server >= 0.12.6 refuse a prompt longer than num_ctx (400) instead of cutting it silently
        body = {"model": self.tag, "messages": list(prompt.messages), "stream": False, "keep_alive": KEEP_ALIVE, "truncate": False}
        reply = self._backend.request("/api/chat", {**body, "options": self.options}, retry_busy=False)
        wall = time.perf_counter() - start
        evaluated = reply.get("prompt_eval_count")
        return Generation(
            reply["message"]["content"].strip(),
            evaluated,
            reply.get("eval_count"),
            *_model_and_queued_s(reply, wall),
            prompt_cut=evaluated is not None and evaluated >= self.options.get("num_ctx", float("inf")),
        )

    def close(self) -> None:
        self._backend.unload(self.tag)


def _model_fact(model_info: dict[str, Any], suffix: str) -> Any:
    """A GGUF fact from /api/show's model_info, whose keys start with the architecture (llama.block_count, qwen2.…)."""
    return next((value for key, value in model_info.items() if key.endswith(suffix)), None)


def kv_bytes_per_token(model_info: dict[str, Any]) -> int | None:
    """f16 KV cache per token of context for one slot: 2 (K and V) x layers x KV heads x head size x 2 bytes (llama.cpp's
    sizing; Ollama's pre-flight estimate uses the same). None when /api/show does not say (embedding models, old servers)."""
    layers, kv_heads = _model_fact(model_info, ".block_count"), _model_fact(model_info, ".attention.head_count_kv")
    width, heads = _model_fact(model_info, ".embedding_length"), _model_fact(model_info, ".attention.head_count")
    if not all(isinstance(v, int) and v > 0 for v in (layers, kv_heads, width, heads)):
        return None
    return 2 * layers * kv_heads * (width // heads) * 2


def _model_and_queued_s(reply: dict[str, Any], wall_s: float) -> tuple[float, float]:
    """(the model's own seconds, seconds waiting before it): Ollama's total_duration includes the wait for a slot,
    prompt_eval_duration + eval_duration do not. Without durations, the wall time is all we know."""
    model_ns = (reply.get("prompt_eval_duration") or 0) + (reply.get("eval_duration") or 0)
    if not model_ns:
        return (reply.get("total_duration") or 0) / 1e9 or wall_s, 0.0
    model_s = model_ns / 1e9
    return model_s, max(0.0, wall_s - model_s - (reply.get("load_duration") or 0) / 1e9)


def _expired(expires_at: str | None) -> bool:
    try:
        return datetime.fromisoformat(expires_at) <= datetime.now(UTC)
    except (TypeError, ValueError):
        return False


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text.strip()
