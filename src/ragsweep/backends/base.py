"""The one interface every backend implements; stages know nothing else about a backend."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from ..config import Settings
    from ..platform import Budget

Kind = Literal["embedding", "llm"]


@dataclass(frozen=True)
class ModelInfo:
    """A model as the plan sees it, before anything is loaded."""

    name: str  # as the user wrote it
    kind: Kind
    digest: str  # content hash of the weights: cache keys depend on it
    license: str | None
    size_bytes: int | None  # on disk
    source: str  # file, folder or server it comes from
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadedInfo:
    """One model the backend holds in memory right now (one row of /api/ps)."""

    name: str
    size_bytes: int | None
    size_vram_bytes: int | None
    pid: int | None  # the process holding it, when known
    stopping: bool = False  # unload already under way (Ollama: expires_at in the past, "Stopping...")


@dataclass(frozen=True)
class GenerationOptions:
    """Sent identically with every request for a model: a change would make Ollama reload it."""

    max_tokens: int
    temperature: float
    seed: int
    num_ctx: int
    stop: tuple[str, ...] = ("\n\n", "\nQuestion:", "\nAnswer:")  # base models keep inventing Q/A pairs
    num_gpu: int | None = None  # layers on the GPU; None = all that fit (set only by the out-of-memory ladder)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class EmbeddingOptions:
    """How an embedding model is placed; only the out-of-memory ladder changes the defaults."""

    half_precision: bool = False  # fp16 weights: half the memory on a CUDA card
    on_cpu: bool = False  # the last resort: off the GPU entirely (slow, but the night finishes)


@dataclass(frozen=True)
class Prompt:
    """One question with its contexts, in both forms: chat messages and plain completion text."""

    messages: tuple[dict[str, str], ...]
    completion: str

    def key(self) -> str:
        return hashlib.sha256(json.dumps([list(self.messages), self.completion], sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int | None  # what the model evaluated: after a silent cut, fewer than were sent
    completion_tokens: int | None
    seconds: float  # the model's own time: the server's durations where it reports them, never time spent in its queue
    queued_s: float = 0.0  # how long the request waited for a free slot (or was backed off as busy) before the model took it
    prompt_cut: bool = False  # the model evaluated num_ctx tokens or more: an older server probably cut the prompt silently


class LoadedModel(ABC):
    """A model resident in memory; `close()` unloads it."""

    info: ModelInfo
    load_seconds: float

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """(L2-normalised float32 vectors, seconds inside the model call)."""
        raise NotImplementedError(f"{self.info.name} is not an embedding model")

    def generate(self, prompt: Prompt) -> Generation:
        raise NotImplementedError(f"{self.info.name} is not a generation model")

    @abstractmethod
    def close(self) -> None: ...


RetryHook = Callable[[str, str, int], None]  # (cause, message, attempt)


class Backend(ABC):
    """Where models run. Subclasses set the capabilities below and implement the abstract methods."""

    name: str
    runs_locally: bool  # models live in child processes of this one (their RSS is ours to read)
    log_path: Path | None = None  # where model processes write their own output (the run's models.log), if they have any
    embedding_fallbacks: bool = False  # the out-of-memory ladder may load an embedding model in fp16, then on the CPU
    splits_across_cards: bool = False  # one model may be spread over several cards (the plan's fit check counts them all)
    serves_concurrently: bool = False  # a server that answers several requests at once (Ollama's slots): generation probes how many
    on_retry: RetryHook = staticmethod(lambda cause, message, attempt: None)  # called before each backoff; the run logs it

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings, device: str) -> Backend:
        """Build from the run's settings (timeouts, hosts, retry budget) and the detected device."""

    def check(self) -> None:  # noqa: B027 (optional: most backends have nothing to check)
        """Raise BackendUnavailableError if the backend cannot be used at all."""

    @abstractmethod
    def describe(self, name: str, kind: Kind) -> ModelInfo:
        """Resolve a model name; raise ModelNotFoundError / ConfigError / MissingPackageError."""

    @abstractmethod
    def load(self, info: ModelInfo, options: GenerationOptions | EmbeddingOptions | None = None) -> LoadedModel: ...

    @abstractmethod
    def loaded(self) -> list[LoadedInfo]: ...

    @abstractmethod
    def unload(self, name: str) -> None:
        """Ask for the model to leave memory (may return before it has)."""

    def plan_notes(self, models: list[ModelInfo]) -> list[str]:
        """Warnings for the plan about how these models will run here (say, on the CPU although a GPU exists)."""
        return []

    def budgets(self) -> dict[str, Budget]:
        """The memory of each box the models run on, by box name; empty: they run on this machine."""
        return {}

    def versions(self) -> dict[str, str]:
        """Versions of the software that runs the models, for run.json."""
        return {}
