"""A protocol-faithful Ollama for the tests: a real HTTP server on 127.0.0.1.

Faithful to ../shared/reference/ollama-api-facts.md where ragsweep depends on it:
- endpoints /, /api/version, /api/tags, /api/show, /api/ps, /api/generate, /api/chat, /api/embed
  with their shapes, status codes and error wordings (404 quoting differs per endpoint);
- keep_alive: numbers are seconds, negative is forever, Go duration strings, "-1" (string) is a
  400, sticky per runner, default 5m;
- unload with an empty prompt/messages and keep_alive 0 answers 200 "unload" at once (also for a
  model that is not loaded, and for embedding models); the model lingers in /api/ps with a past
  expires_at ("Stopping...") and its VRAM comes back later still;
- a 12 GB card: the scheduler's fit check uses Ollama's pre-flight estimate (GGUF size + f16 KV),
  which leaves out the compute buffer and the ~0.4 GB CUDA context each runner holds; the real
  allocation (the /api/ps size, + context) is larger. At most 3 models stay loaded; an idle
  runner with the shortest keep-alive is evicted when the estimate does not fit. A real
  allocation beyond the free memory is answered with the 500 out-of-memory error: the failure
  users hit (ollama#8471, #8616) when models pile up.
- options that change the runner (num_ctx) reload the model.
- parallel slots (OLLAMA_NUM_PARALLEL, default 1): a runner decodes up to `num_parallel` requests
  at once, each slower as streams share the batch (aggregate ceiling about 2.8x at 4); the rest
  wait in a queue, and past `max_queue` pending requests the answer is 503 "server busy". The KV
  cache is allocated per slot, so /api/ps grows with slots x num_ctx. Embedding models: one slot.
- truncation: a chat/generate prompt longer than num_ctx is cut silently (200, prompt_eval_count =
  num_ctx) unless `truncate: false` is sent to a server >= 0.12.6, which answers 400.
- durations: total_duration includes the time a request waited for a slot; prompt_eval_duration +
  eval_duration are the model's own time.

Answers and embeddings are simple deterministic functions of the input. Counters (loads, requests,
peak device use) and fault injection serve the assertions; the device view feeds the test's fake
NVML (tests/fake_gpu/pynvml.py) through GET /_emulator/device, which is not part of Ollama.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GB = 10**9
MIB = 1024**2
CUDA_CONTEXT = int(0.4 * GB)  # per runner process, as NVML sees it
MINIMUM_MEMORY = 457 * MIB  # Ollama's per-GPU reserve in fit checks (CUDA)
FOREVER = float("inf")
DEFAULT_KEEP_ALIVE = 300.0
WAIT = "<wait>"
OOM_MESSAGE = "llama runner process has terminated: cudaMalloc failed: out of memory"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"  # two spaces, as in the source
OVERFLOW_MESSAGE = "the input length exceeds the context length"
SHARED_BATCH_COST = 0.15  # each extra stream in the batch makes every stream this much slower: 4 streams ~ 2.76x one


@dataclass(frozen=True)
class ModelCard:
    name: str  # full tag, e.g. "qwen2.5:7b"
    family: str
    kind: str  # embedding | completion
    disk_bytes: int  # /api/tags size
    vram_bytes: int  # /api/ps size at 4096 context (embedding models: their own context)
    kv_per_4096: int  # f16 KV cache for 4096 tokens (0 for BERT-style embedders)
    parameter_size: str
    quantization: str
    context_length: int
    dims: int = 0
    block_count: int = 28  # layers: num_gpu N puts N of them on the GPU

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def estimate(self, num_ctx: int) -> int:
        """Ollama's pre-flight guess: file size + KV."""
        return self.disk_bytes + int(self.kv_per_4096 * num_ctx / 4096)

    def allocation(self, num_ctx: int, num_gpu: int | None = None, slots: int = 1) -> tuple[int, int]:
        """(bytes on the GPU incl. the CUDA context, bytes in system RAM): the observed /api/ps size, KV scaled per slot."""
        total = self.vram_bytes + int(self.kv_per_4096 * (num_ctx * slots / 4096 - 1))
        share = 1.0 if num_gpu is None or num_gpu < 0 else min(num_gpu, self.block_count) / self.block_count
        return int(total * share) + CUDA_CONTEXT, total - int(total * share)


# Sizes from the facts file (section 5), rounded as the issue suggests.
CATALOGUE = {
    card.name: card
    for card in [
        ModelCard("all-minilm:latest", "bert", "embedding", 46 * 10**6, int(0.1 * GB), 0, "23M", "F16", 256, 384, 6),
        ModelCard("nomic-embed-text:latest", "nomic-bert", "embedding", 274 * 10**6, int(0.6 * GB), 0, "137M", "F16", 2048, 768, 12),
        ModelCard("bge-m3:latest", "bert", "embedding", int(1.2 * GB), int(1.6 * GB), 0, "567M", "F16", 8192, 1024, 24),
        ModelCard("llama3.2:3b", "llama", "completion", int(2.0 * GB), int(3.4 * GB), 448 * MIB, "3.2B", "Q4_K_M", 131072, 0, 28),
        ModelCard("qwen2.5:7b", "qwen2", "completion", int(4.7 * GB), int(5.6 * GB), 224 * MIB, "7.6B", "Q4_K_M", 32768, 0, 28),
        ModelCard("mistral:7b", "llama", "completion", int(4.1 * GB), int(5.6 * GB), 512 * MIB, "7.2B", "Q4_0", 32768, 0, 32),
        ModelCard("phi3:mini", "phi3", "completion", int(2.2 * GB), int(3.0 * GB), 384 * MIB, "3.8B", "Q4_0", 4096, 0, 32),
    ]
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


@dataclass
class Runner:
    card: ModelCard
    num_ctx: int
    keep_alive: float
    allocated: int  # on the GPU
    pid: int
    in_ram: int = 0  # the layers left on the CPU (partial offload)
    num_gpu: int | None = None
    expires_at: float = 0.0  # monotonic
    refcount: int = 0
    stopping_since: float | None = None
    slots: int = 1
    decoding: int = 0  # requests holding a slot now
    waiting: int = 0  # requests queued for a slot
    slot_free: threading.Condition | None = None


@dataclass
class Fault:
    """Answer the next `count` matching requests with an error instead of serving them."""

    path: str  # e.g. "/api/chat"
    status: int = 500
    message: str = ""
    count: int = 1
    model: str | None = None
    mid_stream: bool = False  # 200 with a trailing {"error"} line and no done chunk
    # error | reset (connection closed, no answer) | hang (answers after hang_s) | leftover (another client loads `leftover`, then OOM)
    kind: str = "error"
    hang_s: float = 0.0
    leftover: str | None = None
    when: str = "any"  # any | load (empty prompt/messages/input) | work (a real request)


@dataclass
class EmulatorState:
    total_vram: int
    linger_s: float
    vram_lag_s: float
    system_ram: int = 64 * 1024**3  # for the layers a partial offload leaves on the CPU
    foreign_bytes: int = 0  # VRAM held by another process (a desktop, another job)
    max_loaded: int = 3
    runners: dict[str, Runner] = field(default_factory=dict)
    freeing: list[tuple[float, int]] = field(default_factory=list)  # (release at, bytes)
    loads: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)  # (path, model) -> count
    work: Counter = field(default_factory=Counter)  # ("answers" | "embedded", model) -> units of real model work
    evictions: int = 0
    awaiting_recovery: bool = False
    oom_errors: int = 0
    busy_errors: int = 0  # 503s answered because the queue was full
    peak_device_used: int = 0
    peak_decoding: int = 0  # most requests decoded at once by one runner
    peak_waiting: int = 0  # most requests queued at once for one runner
    authorizations: Counter = field(default_factory=Counter)  # Authorization headers seen (an auth proxy in front would check them)
    faults: list[Fault] = field(default_factory=list)
    next_pid: int = 424200


class OllamaEmulator:
    def __init__(
        self,
        total_vram: int = 12 * 1024**3,
        linger_s: float = 0.15,
        vram_lag_s: float = 0.3,
        call_s: float = 0.002,
        version: str = "0.13.5",
        system_ram: int = 64 * 1024**3,
        foreign_bytes: int = 0,
        port: int = 0,
        num_parallel: int = 1,
        max_queue: int = 512,
    ):
        self.state = EmulatorState(total_vram, linger_s, vram_lag_s, system_ram, foreign_bytes)
        self.call_s = call_s  # time "inside the model" per request, alone in the batch
        self.num_parallel = num_parallel  # OLLAMA_NUM_PARALLEL
        self.max_queue = max_queue  # OLLAMA_MAX_QUEUE
        self.version = version
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._stop = threading.Event()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> OllamaEmulator:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._reaper, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # the device, as NVML would see it ----------------------------------------------------
    def device_used(self) -> int:
        now = time.monotonic()
        with self.lock:
            return (
                self.state.foreign_bytes
                + sum(r.allocated for r in self.state.runners.values())
                + sum(b for t, b in self.state.freeing if t > now)
            )

    def device(self) -> dict[str, Any]:
        with self.lock:
            used = self.device_used()
            processes = [{"pid": r.pid, "used": r.allocated, "name": "ollama"} for r in self.state.runners.values()]
            if self.state.foreign_bytes:
                processes.append({"pid": 4242, "used": self.state.foreign_bytes, "name": "Xorg"})
            return {
                "total": self.state.total_vram,
                "used": used,
                "free": self.state.total_vram - used,
                "processes": processes,
                "name": f"Emulated GPU {self.state.total_vram / 1024**3:.0f} GiB",
            }

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Until no request is being served (a killed client's last request still runs to its end)."""
        deadline = time.monotonic() + timeout_s
        while any(r.refcount for r in self.state.runners.values()) and time.monotonic() < deadline:
            time.sleep(0.01)

    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.state.faults.append(fault)

    # scheduling ---------------------------------------------------------------------------
    def _reaper(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            with self.lock:
                for name, runner in list(self.state.runners.items()):
                    if runner.refcount == 0 and runner.stopping_since is None and runner.expires_at <= now:
                        runner.stopping_since = now
                    if runner.stopping_since is not None and runner.refcount == 0 and now - runner.stopping_since >= self.state.linger_s:
                        del self.state.runners[name]  # runner process gone; VRAM lags behind
                        self.state.freeing.append((now + self.state.vram_lag_s, runner.allocated))
                self.state.freeing = [(t, b) for t, b in self.state.freeing if t > now]

    def _expire(self, name: str) -> None:
        with self.lock:
            runner = self.state.runners.get(name)
            if runner and runner.stopping_since is None:
                runner.expires_at = time.monotonic()
                runner.stopping_since = time.monotonic()

    def acquire(self, card: ModelCard, num_ctx: int, keep_alive: float | None, num_gpu: int | None = None) -> Runner:
        """Find or load a runner for the model; refcount + 1. Raises HTTPError 500 on OOM."""
        while True:
            with self.lock:
                runner = self.state.runners.get(card.name)
                if runner and runner.stopping_since is None and runner.num_ctx == num_ctx and runner.num_gpu == num_gpu:
                    runner.refcount += 1
                    if keep_alive is not None:
                        runner.keep_alive = keep_alive  # sticky: only a request that sets it changes it
                    return runner
                if runner and runner.stopping_since is None:  # different runner options: reload
                    self._expire(card.name)
                if card.name not in self.state.runners:
                    victim = self._victim_for(card, num_ctx)
                    if victim is None:
                        return self._load(card, num_ctx, keep_alive, num_gpu)
                    if victim != WAIT:
                        self._expire(victim)
                        self.state.evictions += 1
                        self.state.awaiting_recovery = True
            time.sleep(0.01)  # wait for the expired runner to leave (and its VRAM to return)

    def _victim_for(self, card: ModelCard, num_ctx: int) -> str | None:
        """None when the model may load now; else the idle runner to evict first."""
        others = dict(self.state.runners)
        if any(r.stopping_since is not None for r in others.values()):
            return WAIT  # an expired runner is still leaving
        lagging = any(t > time.monotonic() for t, _ in self.state.freeing)
        if lagging and self.state.awaiting_recovery:
            return WAIT  # after its own eviction the scheduler waits for VRAM to recover
        self.state.awaiting_recovery = False
        # Otherwise it does not wait: free = min(driver free, total - loaded), and the driver lags.
        free = self.state.total_vram - MINIMUM_MEMORY - self.device_used()
        if not others or (card.estimate(num_ctx) <= free and len(others) < self.state.max_loaded):
            return None
        idle = sorted((r.keep_alive, n) for n, r in others.items() if r.refcount == 0)
        return idle[0][1] if idle else next(iter(others))

    def _load(self, card: ModelCard, num_ctx: int, keep_alive: float | None, num_gpu: int | None = None) -> Runner:
        slots = 1 if card.kind == "embedding" else self.num_parallel  # embedding models always get one slot
        allocated, in_ram = card.allocation(num_ctx, num_gpu, slots)
        ram_free = self.state.system_ram - sum(r.in_ram for r in self.state.runners.values())
        if in_ram > ram_free:
            self.state.oom_errors += 1
            raise HTTPError(
                500, f"model requires more system memory ({in_ram / 1024**3:.1f} GiB) than is available ({ram_free / 1024**3:.1f} GiB)"
            )
        if allocated > self.state.total_vram - self.device_used():
            self.state.oom_errors += 1
            raise HTTPError(500, OOM_MESSAGE)
        self.state.next_pid += 1
        runner = Runner(
            card,
            num_ctx,
            DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive,
            allocated,
            self.state.next_pid,
            in_ram,
            num_gpu,
            refcount=1,
            slots=slots,
            slot_free=threading.Condition(self.lock),
        )
        self.state.runners[card.name] = runner
        self.state.loads[card.name] += 1
        self.state.peak_device_used = max(self.state.peak_device_used, self.device_used())
        return runner

    def decode(self, runner: Runner, seconds_alone: float) -> float:
        """Wait for a slot (503 past the queue limit), then decode in the shared batch; returns the seconds spent decoding."""
        with self.lock:
            if runner.decoding >= runner.slots and runner.waiting >= self.max_queue:
                self.state.busy_errors += 1
                raise HTTPError(503, BUSY_MESSAGE)
            runner.waiting += 1
            if runner.decoding >= runner.slots:
                self.state.peak_waiting = max(self.state.peak_waiting, runner.waiting)
            while runner.decoding >= runner.slots:
                runner.slot_free.wait()
            runner.waiting -= 1
            runner.decoding += 1
            self.state.peak_decoding = max(self.state.peak_decoding, runner.decoding)
            seconds = seconds_alone * (1 + SHARED_BATCH_COST * (runner.decoding - 1))  # streams share the batch
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                runner.decoding -= 1
                runner.slot_free.notify()
        return seconds

    def release(self, runner: Runner) -> None:
        with self.lock:
            runner.refcount -= 1
            if runner.refcount == 0:
                runner.expires_at = time.monotonic() + runner.keep_alive if runner.keep_alive != FOREVER else FOREVER
                if runner.keep_alive == 0:
                    runner.stopping_since = time.monotonic()

    # helpers for the handlers -------------------------------------------------------------
    def card(self, name: str | None, not_found: str) -> ModelCard:
        if not name:
            raise HTTPError(400, "model is required")
        full = name if ":" in name else f"{name}:latest"
        if full not in CATALOGUE:
            raise HTTPError(404, not_found.format(name=name))
        return CATALOGUE[full]

    def take_fault(self, path: str, model: str | None, is_load: bool = False) -> Fault | None:
        with self.lock:
            for fault in self.state.faults:
                if fault.when != "any" and (fault.when == "load") != is_load:
                    continue
                if fault.path == path and fault.count > 0 and (fault.model is None or fault.model == model):
                    fault.count -= 1
                    return fault
        return None


def parse_keep_alive(value: Any) -> float | None:
    """Seconds; None = not given (keep the runner's sticky value or the default)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise HTTPError(400, "Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        if value == "0":
            return 0.0
        units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
        parts = re.findall(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise HTTPError(
                400,
                f'time: missing unit in duration "{value}"'
                if re.fullmatch(r"-?\d+(\.\d+)?", value)
                else f'time: invalid duration "{value}"',
            )
        seconds = sum(float(n) * units[u] for n, u in parts)
        return FOREVER if seconds < 0 else seconds
    raise HTTPError(400, f"Unsupported type: '{type(value).__name__}'")


def _at_least(version: str, minimum: str) -> bool:
    as_tuple = lambda v: tuple(int(part) for part in re.findall(r"\d+", v)[:3])  # noqa: E731
    return as_tuple(version) >= as_tuple(minimum)


def _now_local() -> str:
    return datetime.now().astimezone().isoformat()


def _created_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _details(card: ModelCard) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": card.family,
        "families": [card.family],
        "parameter_size": card.parameter_size,
        "quantization_level": card.quantization,
    }


def _embed(text: str, dims: int) -> list[float]:
    """Hashed bag of words, L2-normalised: texts sharing words are close, as retrieval needs."""
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _answer(messages_or_prompt: str) -> str:
    """The first words of the first context passage: deterministic and input-dependent."""
    match = re.search(r"\[1\] (.+)", messages_or_prompt)
    words = (match.group(1) if match else messages_or_prompt).split()
    return " ".join(words[2:5]) or "unknown"


def _structured(body: dict[str, Any]) -> str:
    """`format` (a JSON schema, or "json" with the schema in the prompt): answer with valid JSON, as Ollama does."""
    from judge_server import _schema_in, instance_of

    schema = (
        body["format"] if isinstance(body["format"], dict) else _schema_in(body.get("messages") or [{"content": body.get("prompt", "")}])
    )
    return json.dumps(instance_of(schema, schema.get("$defs", {})) if schema else {})


def _handler_for(emulator: OllamaEmulator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_HEAD(self):
            self._route("HEAD")

        def _route(self, method: str):
            routes = {
                "/": ("GET", "HEAD"),
                "/api/version": ("GET", "HEAD"),
                "/api/tags": ("GET",),
                "/api/ps": ("GET",),
                "/api/show": ("POST",),
                "/api/generate": ("POST",),
                "/api/chat": ("POST",),
                "/api/embed": ("POST",),
                "/_emulator/device": ("GET",),
            }
            if emulator._stop.is_set():  # stopped: kept-alive connections die too, as with a killed server
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if self.path not in routes:
                return self._send(404, b"404 page not found", "text/plain")
            if method not in routes[self.path]:
                return self._send(405, b"405 method not allowed", "text/plain")
            try:
                body = self._body() if method == "POST" else {}
                model = body.get("model") if isinstance(body, dict) else None
                with emulator.lock:
                    emulator.state.requests[(self.path, model)] += 1
                    emulator.state.authorizations[self.headers.get("Authorization")] += 1
                is_load = isinstance(body, dict) and not (body.get("messages") or body.get("prompt") or body.get("input"))
                fault = emulator.take_fault(self.path, model, is_load)
                if fault and fault.kind == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)  # the runner's host went away mid-request: no answer at all
                    return
                if fault and fault.kind == "leftover":
                    emulator.release(emulator.acquire(CATALOGUE[fault.leftover], 4096, FOREVER))  # another client's model, pinned
                    raise HTTPError(500, OOM_MESSAGE)
                if fault and not fault.mid_stream and fault.kind == "error":
                    raise HTTPError(fault.status, fault.message)
                handler = getattr(self, "_" + (self.path.strip("/").replace("/", "_").lstrip("_") or "root"))
                status, payload = handler(body, fault)
            except HTTPError as error:
                return self._json(error.status, {"error": error.message})
            if isinstance(payload, list):  # NDJSON stream
                return self._send(status, "".join(json.dumps(p) + "\n" for p in payload).encode(), "application/x-ndjson")
            return self._json(status, payload)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length == 0:
                raise HTTPError(400, "missing request body")
            try:
                body = json.loads(self.rfile.read(length))
            except json.JSONDecodeError as error:
                raise HTTPError(400, f"invalid character at offset {error.pos}") from None
            return body

        def _json(self, status: int, payload: Any):
            self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8")

        def _send(self, status: int, data: bytes, content_type: str):
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its watchdog cut the call)

        # endpoints ---------------------------------------------------------------------------
        def _root(self, body, fault):
            return 200, "Ollama is running"

        def _api_version(self, body, fault):
            return 200, {"version": emulator.version}

        def _emulator_device(self, body, fault):
            return 200, emulator.device()

        def _api_tags(self, body, fault):
            models = [
                {
                    "name": c.name,
                    "model": c.name,
                    "modified_at": _now_local(),
                    "size": c.disk_bytes,
                    "digest": c.digest,
                    "details": _details(c),
                }
                for c in CATALOGUE.values()
            ]
            return 200, {"models": models}

        def _api_show(self, body, fault):
            card = emulator.card(body.get("model") or body.get("name"), "model '{name}' not found")
            capabilities = ["embedding"] if card.kind == "embedding" else ["completion", "tools"]
            info = {
                "general.architecture": card.family,
                f"{card.family}.context_length": card.context_length,
                f"{card.family}.block_count": card.block_count,
                f"{card.family}.embedding_length": 4096,
                f"{card.family}.attention.head_count": 32,
                # chosen so that the facts file's formula gives the card's KV for 4096 tokens
                f"{card.family}.attention.head_count_kv": max(1, round(card.kv_per_4096 / (2 * card.block_count * 128 * 4096 * 2))),
            }
            return 200, {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": _details(card),
                "model_info": info,
                "capabilities": capabilities,
                "modified_at": _now_local(),
            }

        def _api_ps(self, body, fault):
            now, rows = time.monotonic(), []
            with emulator.lock:
                for runner in emulator.state.runners.values():
                    until = runner.expires_at if runner.stopping_since is None else runner.stopping_since
                    expires = (
                        datetime(2318, 1, 1).astimezone()
                        if until == FOREVER
                        else datetime.now().astimezone() + timedelta(seconds=until - now)
                    )
                    vram = runner.allocated - CUDA_CONTEXT
                    rows.append(
                        {
                            "name": runner.card.name,
                            "model": runner.card.name,
                            "size": vram + runner.in_ram,
                            "digest": runner.card.digest,
                            "details": _details(runner.card),
                            "expires_at": expires.isoformat(),
                            "size_vram": vram,
                            "context_length": min(runner.num_ctx, runner.card.context_length),
                        }
                    )
            rows.sort(key=lambda r: r["expires_at"], reverse=True)
            return 200, {"models": rows}

        def _api_generate(self, body, fault):
            return self._complete(body, fault, chat=False)

        def _api_chat(self, body, fault):
            return self._complete(body, fault, chat=True)

        def _complete(self, body, fault, chat: bool):
            card = emulator.card(body.get("model"), "model '{name}' not found")
            keep_alive = parse_keep_alive(body.get("keep_alive"))
            empty = not body.get("messages") if chat else not body.get("prompt")
            base = {"model": body["model"], "created_at": _created_at()}
            blank = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
            if empty and keep_alive == 0:  # the unload branch runs before any capability check
                emulator._expire(card.name)
                return 200, {**base, **blank, "done": True, "done_reason": "unload"}
            if card.kind == "embedding":
                raise HTTPError(400, f'"{body["model"]}" does not support {"chat" if chat else "generate"}')
            options = body.get("options") or {}
            if "num_ctx" in options and not isinstance(options["num_ctx"], int):
                raise HTTPError(500, 'option "num_ctx" must be of type integer')
            start = time.perf_counter()
            runner = emulator.acquire(card, options.get("num_ctx", 4096), keep_alive, options.get("num_gpu"))
            load_ns = int((time.perf_counter() - start) * 1e9)
            try:
                if empty:
                    if fault and fault.kind == "hang":
                        time.sleep(fault.hang_s)  # a slow load: the runner already holds its memory while the weights load
                    return 200, {**base, **blank, "done": True, "done_reason": "load"}
                source = json.dumps(body["messages"]) if chat else body["prompt"]
                words = len(source.split())  # the emulator's tokens
                if words > runner.num_ctx and body.get("truncate") is False and _at_least(emulator.version, "0.12.6"):
                    raise HTTPError(400, OVERFLOW_MESSAGE)
                if fault and fault.kind == "hang":
                    time.sleep(fault.hang_s)  # a runaway generation: it holds its runner ("Stopping..." after an unload) until it ends
                model_s = emulator.decode(runner, emulator.call_s)
                with emulator.lock:
                    emulator.state.work[("answers", card.name)] += 1
                text = _answer(source.replace("\\n", "\n")) if not body.get("format") else _structured(body)
                metrics = {
                    "total_duration": int((time.perf_counter() - start) * 1e9),  # the wait for a slot included, as in Ollama
                    "load_duration": load_ns,
                    "prompt_eval_count": min(words, runner.num_ctx),  # after a silent cut: what was evaluated
                    "prompt_eval_duration": int(model_s * 5e8),
                    "eval_count": len(text.split()),
                    "eval_duration": int(model_s * 5e8),
                }
                content = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
                if fault and fault.mid_stream:  # runner died after chunks went out: 200, error line, no done
                    return 200, [{**base, **content, "done": False}, {"error": fault.message}]
                final = {**base, **content, "done": True, "done_reason": "stop", **metrics}
                if body.get("stream", True):
                    return 200, [{**base, **content, "done": False}, {**base, **blank, "done": True, "done_reason": "stop", **metrics}]
                return 200, final
            finally:
                emulator.release(runner)

        def _api_embed(self, body, fault):
            card = emulator.card(body.get("model"), 'model "{name}" not found, try pulling it first')
            keep_alive = parse_keep_alive(body.get("keep_alive"))
            inputs = body.get("input", [])
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
                raise HTTPError(400, "invalid input type")
            if card.kind != "embedding":
                raise HTTPError(400, f'"{body["model"]}" does not support embeddings')
            start = time.perf_counter()
            runner = emulator.acquire(card, card.context_length, keep_alive)
            load_ns = int((time.perf_counter() - start) * 1e9)
            try:
                inputs = [i for i in inputs if i]
                if not inputs:
                    return 200, {"model": body["model"], "embeddings": []}
                emulator.decode(runner, emulator.call_s)
                with emulator.lock:
                    emulator.state.work[("embedded", card.name)] += len(inputs)
                vectors = [_embed(text, card.dims) for text in inputs]
                tokens = sum(len(text.split()) for text in inputs)
                return 200, {
                    "model": body["model"],
                    "embeddings": vectors,
                    "total_duration": int((time.perf_counter() - start) * 1e9),
                    "load_duration": load_ns,
                    "prompt_eval_count": tokens,
                }
            finally:
                emulator.release(runner)

    return Handler


# The matrix of the acceptance test, and the seed's way of driving Ollama through it.
LLMS = ["llama3.2:3b", "qwen2.5:7b", "mistral:7b"]
EMBEDDINGS = ["all-minilm", "nomic-embed-text", "bge-m3"]


def seed_way(emu: OllamaEmulator) -> list[str]:
    """The seed's loop: E x L, default keep_alive, default options, never an unload. Returns the errors."""
    import httpx

    errors = []
    with httpx.Client(base_url=emu.url, timeout=60) as client:
        for embedding in EMBEDDINGS:
            for llm in LLMS:
                for reply in (
                    client.post("/api/embed", json={"model": embedding, "input": ["a question"]}),
                    client.post("/api/chat", json={"model": llm, "messages": [{"role": "user", "content": "hi"}], "stream": False}),
                ):
                    if reply.status_code != 200:
                        errors.append(reply.json()["error"])
    return errors
