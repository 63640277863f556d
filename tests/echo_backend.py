"""A whole backend in one file, registered from a test: the proof that adding one needs no other edit.

Its models are arithmetic, not fakes of a real server: embeddings are hashed bags of words
(so retrieval is real lexical matching) and the "LLM" answers with the first passage's title.
"""

from __future__ import annotations

import hashlib
import re
import time

import numpy as np

from ragsweep.backends.base import Backend, Generation, GenerationOptions, Kind, LoadedInfo, LoadedModel, ModelInfo, Prompt
from ragsweep.errors import ModelNotFoundError

DIMS = 256


class EchoModel(LoadedModel):
    def __init__(self, backend: EchoBackend, info: ModelInfo):
        self.info, self._backend, self.load_seconds = info, backend, 0.0
        backend.resident.add(info.name)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        vectors = np.zeros((len(texts), DIMS), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIMS] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9), 0.0

    def generate(self, prompt: Prompt) -> Generation:
        start = time.perf_counter()
        first = re.search(r"\[1\] ([^:]+):", prompt.completion)
        return Generation(first.group(1) if first else "unknown", 10, 2, time.perf_counter() - start)

    def close(self) -> None:
        self._backend.resident.discard(self.info.name)


class EchoBackend(Backend):
    name = "echo"
    runs_locally = False

    def __init__(self):
        self.resident: set[str] = set()
        self.loads: list[str] = []

    @classmethod
    def from_settings(cls, settings, device: str) -> EchoBackend:
        return cls()

    def describe(self, name: str, kind: Kind) -> ModelInfo:
        if not name.startswith("echo-"):
            raise ModelNotFoundError(f"unknown echo model {name!r}")
        return ModelInfo(name, kind, hashlib.sha256(name.encode()).hexdigest(), "MIT", 1000, "arithmetic")

    def load(self, info: ModelInfo, options: GenerationOptions | None = None) -> LoadedModel:
        self.loads.append(info.name)
        return EchoModel(self, info)

    def loaded(self) -> list[LoadedInfo]:
        return [LoadedInfo(name, None, None, None) for name in sorted(self.resident)]

    def unload(self, name: str) -> None:
        self.resident.discard(name)
