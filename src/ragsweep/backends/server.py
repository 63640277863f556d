"""OpenAI-compatible servers (vLLM, SGLang, llama.cpp's llama-server, llama-cpp-python's server), in two modes.

Launched (--server-command TEMPLATE): one server per model, started from the template ({model}, {port}, {host}) in its
own process group, used for every answer of that model, then stopped (SIGTERM, SIGKILL after a grace period) and its
memory verified like any model's. A server holds one model until its process ends (vLLM never gives memory back inside a
process: vllm-project/vllm#4678), so the process is the unit of memory. Nothing it starts outlives ragsweep: the group
is stopped on every way out, and on Linux the server gets SIGKILL if ragsweep itself dies (PR_SET_PDEATHSIG).

Attached (--server-url URL): a server someone else runs. Its models are the ids /v1/models lists; ragsweep never stops
it, and its memory is the server's to manage.

Both: chat completions with the run's prompt, max_tokens, temperature and seed; token counts from `usage`; a 400 that
says the prompt is too long is a failed sample with cause "context overflow"; embeddings through /v1/embeddings. The
API key (SERVER_API_KEY, else OPENAI_API_KEY) is read from the environment, sent as a Bearer token, never stored.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from ..errors import CONTEXT_OVERFLOW, BackendUnavailableError, ConfigError, ModelCallError, ModelNotFoundError
from ..redact import redact
from .base import Backend, Generation, GenerationOptions, Kind, LoadedInfo, LoadedModel, ModelInfo, Prompt

HOST = "127.0.0.1"  # a launched server listens here only: it is ours, not the network's
STOP_GRACE_S = 15.0  # SIGTERM, then this long, then SIGKILL for the whole group
LOG_TAIL = 5  # the server's last lines quoted when it fails to start
OVERFLOW_MARKERS = ("context_length_exceeded", "maximum context length", "context length", "exceeds the context", "too long")
PLACEHOLDERS = ("{model}", "{port}")


class ServerBackend(Backend):
    name = "server"
    serves_concurrently = True  # servers batch (vLLM, SGLang, llama-server --parallel): generation probes how many

    def __init__(self, command: str | None, url: str | None, request_timeout_s: float, start_timeout_s: float, api_key: str | None):
        if (command is None) == (url is None):
            raise ConfigError(
                "--backend server needs one of --server-command TEMPLATE (ragsweep launches one server per model, e.g. "
                "'vllm serve {model} --port {port}') or --server-url URL (a server someone else runs)"
            )
        if command is not None:
            missing = [p for p in PLACEHOLDERS if p not in command]
            if missing:
                raise ConfigError(f"--server-command must hold {' and '.join(missing)}: ragsweep fills in the model and a free port")
        self.command, self.url = command, url
        self.launched = command is not None
        self.runs_locally = self.launched  # a launched server is our child: its RSS is ours to read
        self.request_timeout_s, self.start_timeout_s = request_timeout_s, start_timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._servers: dict[str, Server] = {}  # model name -> its running launched server
        self._ids: dict[str, str] = {}  # attached: model name -> the id the server serves it as
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends: every launch happens on this one long-lived
        # thread, never on a request thread that finishes after its answer
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragsweep-server-launcher")

    @classmethod
    def from_settings(cls, settings, device: str) -> ServerBackend:
        key = os.environ.get("SERVER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return cls(settings.server_command, settings.server_url, settings.watchdog_s, settings.server_start_timeout_s, key)

    def check(self) -> None:
        if self.launched:
            program = shlex.split(self.command)[0]
            if shutil.which(program) is None:
                raise ConfigError(f"--server-command: {program!r} is not a program on PATH — install the server or fix the template")
            return
        self._served()  # the attached server answers, or the run stops before any work

    def describe(self, name: str, kind: Kind) -> ModelInfo:
        if self.launched:
            path = Path(name).expanduser()
            # a file the user names; "Qwen/Qwen2.5-7B-Instruct" is a hub id for vLLM or SGLang to fetch, not a path
            looks_like_a_path = name.startswith(("/", "./", "../", "~")) or path.suffix in {".gguf", ".safetensors", ".bin"}
            if looks_like_a_path and not path.exists():
                raise ModelNotFoundError(f"model {name!r} is not a file or folder here — --server-command launches {{model}} from it")
            if path.is_file():
                digest, size = _file_digest(path), path.stat().st_size
            else:
                digest, size = _text_digest(f"{name}|{self.command}"), (_folder_size(path) if path.is_dir() else None)
            return ModelInfo(name, kind, digest, None, size, self._source(name), {"server": "launched", "command": self.command})
        served = self._served()
        if name not in served:
            listed = ", ".join(served) or "none"
            raise ModelNotFoundError(f"the server at {redact(self.url)} does not serve {name!r} — it serves: {listed}")
        self._ids[name] = name
        return ModelInfo(name, kind, _text_digest(f"{name}|{redact(self.url)}"), None, None, redact(self.url), {"server": "attached"})

    def plan_notes(self, models: list[ModelInfo]) -> list[str]:
        if not self.launched:
            return [f"server at {redact(self.url)}: its memory is the server's to manage (ragsweep records it, never unloads)"]
        notes = [f"server: each model in a server of its own, launched from: {self.command}"]
        if "vllm" in self.command and "--gpu-memory-utilization" not in self.command:
            notes.append("vLLM takes 90 % of the card by default: add --gpu-memory-utilization 0.85 (or less) to --server-command")
        return notes

    def load(self, info: ModelInfo, options: GenerationOptions | None = None) -> LoadedModel:
        if not self.launched:
            if info.name not in self._ids:
                self.describe(info.name, info.kind)
            return ServedModel(self, info, self.url, self._ids[info.name], options)
        server = self._launcher.submit(self._launch, info).result()
        return ServedModel(self, info, server.url, server.model_id, options, server)

    def loaded(self) -> list[LoadedInfo]:
        if not self.launched:
            return []  # never ours to unload
        found = []
        for name, server in list(self._servers.items()):
            if server.process.poll() is not None:
                self._servers.pop(name, None)
                continue
            found.append(LoadedInfo(name, server.rss_bytes(), None, server.process.pid))
        return found

    def unload(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is not None:
            server.stop()

    def versions(self) -> dict[str, str]:
        return {"server": self.command if self.launched else redact(self.url)}

    def _source(self, name: str) -> str:
        return str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name

    def _launch(self, info: ModelInfo) -> Server:
        old = self._servers.pop(info.name, None)
        if old is not None:
            old.stop()
        port = _free_port()
        command = self.command.replace("{model}", shlex.quote(info.name)).replace("{port}", str(port)).replace("{host}", HOST)
        server = Server(shlex.split(command), f"http://{HOST}:{port}", self.log_path, self._headers)
        self._servers[info.name] = server
        try:
            server.wait_ready(self.start_timeout_s)
        except BaseException:
            self._servers.pop(info.name, None)
            server.stop()
            raise
        return server

    def _served(self) -> list[str]:
        """The model ids the attached server lists at /v1/models."""
        try:
            response = httpx.get(f"{self.url.rstrip('/')}/v1/models", headers=self._headers, timeout=10)
        except httpx.HTTPError as error:
            raise BackendUnavailableError(
                f"the server at {redact(self.url)} is not reachable ({type(error).__name__}) — start it, or fix --server-url"
            ) from None
        if response.status_code in (401, 403):
            raise ConfigError(f"the server at {redact(self.url)} refused the API key ({response.status_code}) — set SERVER_API_KEY")
        try:
            return [entry["id"] for entry in response.raise_for_status().json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            raise BackendUnavailableError(f"the server at {redact(self.url)} has no OpenAI-compatible /v1/models") from None


class Server:
    """One launched server process (the leader of its own process group) and its URL."""

    def __init__(self, argv: list[str], url: str, log_path: Path | None, headers: dict[str, str]):
        self.url, self.headers, self.argv = url, headers, argv
        self.model_id = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self._log = log_path.open("a", encoding="utf-8") if log_path else None
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole, and Ctrl-C at the terminal is ours to relay
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as error:
            raise ConfigError(f"--server-command could not start {argv[0]!r} ({error.strerror or error})") from None
        self._reader = threading.Thread(target=self._copy_output, name="ragsweep-server-log", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout_s: float) -> None:
        """Until GET /v1/models answers; a server that exits or never answers is one line with its last log lines."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=2)
                raise BackendUnavailableError(f"the server exited during its start (code {self.process.returncode}){self._said()}")
            try:
                response = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=2)
                if response.status_code == 200:
                    self.model_id = response.json()["data"][0]["id"]
                    return
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.25)
        raise BackendUnavailableError(
            f"the server did not answer /v1/models within {timeout_s:.0f} s (--server-start-timeout){self._said()}"
        )

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period; returns when the leader is gone."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_GRACE_S)
        _signal_group(self.process.pid, signal.SIGKILL)  # a child the server left behind in its group
        self._reader.join(timeout=2)

    def rss_bytes(self) -> int | None:
        try:
            leader = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [leader, *leader.children(recursive=True)])
        except psutil.Error:
            return None

    def _copy_output(self) -> None:
        for raw in self.process.stdout:
            line = redact(raw.decode("utf-8", "replace").rstrip())
            self.tail.append(line)
            if self._log:
                self._log.write(f"[server {self.argv[0]}] {line}\n")
                self._log.flush()
        if self._log:
            self._log.close()

    def _said(self) -> str:
        lines = [line for line in self.tail if line.strip()]
        return f"; its last lines: {' | '.join(lines)}" if lines else ""


class ServedModel(LoadedModel):
    """A model behind an OpenAI-compatible URL; `close()` stops its server when ragsweep launched it."""

    def __init__(
        self,
        backend: ServerBackend,
        info: ModelInfo,
        url: str,
        model_id: str,
        options: GenerationOptions | None,
        server: Server | None = None,
    ):
        self.info, self.options, self.load_seconds = info, options, 0.0
        self._backend, self._server, self._model_id = backend, server, model_id
        self._client = httpx.Client(
            base_url=url.rstrip("/"), headers=backend._headers, timeout=httpx.Timeout(backend.request_timeout_s, connect=5.0)
        )

    def generate(self, prompt: Prompt) -> Generation:
        o = self.options
        body = {
            "model": self._model_id,
            "messages": list(prompt.messages),
            "max_tokens": o.max_tokens,
            "temperature": o.temperature,
            "seed": o.seed,
            "stop": list(o.stop),
        }
        started = time.perf_counter()
        reply = self._post("/v1/chat/completions", body)
        seconds = time.perf_counter() - started  # servers report no durations: the request's time, its queue included
        usage = reply.get("usage") or {}
        text = (reply["choices"][0]["message"].get("content") or "").strip()
        return Generation(text, usage.get("prompt_tokens"), usage.get("completion_tokens"), seconds)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        reply = self._post("/v1/embeddings", {"model": self._model_id, "input": texts})
        rows = [np.asarray(row["embedding"], dtype=np.float32) for row in sorted(reply["data"], key=lambda row: row["index"])]
        # a causal model without pooling (llama-cpp-python's server) answers one vector per token: mean-pooled here
        vectors = np.stack([row.reshape(-1, row.shape[-1]).mean(axis=0) for row in rows])
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, time.perf_counter() - started

    def close(self) -> None:
        self._client.close()
        if self._server is not None:
            self._backend.unload(self.info.name)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(path, json=body)
        except httpx.TimeoutException:
            raise ModelCallError(f"{path}: no answer within the request timeout", cause="timeout") from None
        except httpx.TransportError as error:  # a launched server that died: the lifecycle restarts it once
            raise ModelCallError(f"{path}: the server stopped answering ({type(error).__name__})", cause="runner_crash") from None
        if response.status_code >= 400:
            message = redact(response.text[:500])
            overflow = response.status_code == 400 and any(marker in message.lower() for marker in OVERFLOW_MARKERS)
            cause = CONTEXT_OVERFLOW if overflow else "busy" if response.status_code in (429, 503) else "error"
            raise ModelCallError(f"{path} {response.status_code}: {message}", cause=cause)
        try:
            return response.json()
        except ValueError:
            raise ModelCallError(f"{path}: the server's answer is not JSON", cause="error") from None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when ragsweep dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
