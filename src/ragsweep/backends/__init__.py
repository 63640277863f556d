"""Backends: where models run. A backend is one module with one `Backend` subclass and one line in BACKENDS.

The CLI's --backend choices, the config's validation and `get_backend` all read BACKENDS. A backend
that runs models in this process's children needs no other edit; one with settings of its own (a
server URL, a launch command) also adds them to config and cli.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backend, Generation, GenerationOptions, LoadedInfo, LoadedModel, ModelInfo, Prompt
from .local import LocalBackend
from .ollama import OllamaBackend
from .server import ServerBackend

if TYPE_CHECKING:
    from ..config import Settings

BACKENDS: dict[str, type[Backend]] = {"local": LocalBackend, "ollama": OllamaBackend, "server": ServerBackend}


def get_backend(settings: Settings, device: str) -> Backend:
    """The backend the settings name, built with the run's timeouts and retry budget."""
    return BACKENDS[settings.backend].from_settings(settings, device)


__all__ = ["BACKENDS", "Backend", "Generation", "GenerationOptions", "LoadedInfo", "LoadedModel", "ModelInfo", "Prompt", "get_backend"]
