"""Backends: where models run. `get_backend` is the only door the stages use."""

from __future__ import annotations

from .base import Backend, Generation, GenerationOptions, LoadedInfo, LoadedModel, ModelInfo, Prompt


def get_backend(name: str, device: str, ollama_host: str | None = None, request_timeout_s: float = 600.0, backend_retry_s: float = 120.0) -> Backend:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(device=device, request_timeout_s=request_timeout_s)
    if name == "ollama":
        from .ollama import OllamaBackend

        return OllamaBackend(host=ollama_host, request_timeout_s=request_timeout_s, down_retry_s=backend_retry_s)
    raise ValueError(f"unknown backend {name!r}")


__all__ = ["Backend", "Generation", "GenerationOptions", "LoadedInfo", "LoadedModel", "ModelInfo", "Prompt", "get_backend"]
