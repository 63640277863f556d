"""A test-owned OpenAI-compatible judge: a real HTTP server on 127.0.0.1.

POST /v1/chat/completions answers with JSON that is valid against the schema the client put in
its prompt (instructor's JSON mode), so every RAGAS metric can parse it; POST /v1/embeddings
returns deterministic vectors with positive components. Faults are injectable: 429 with
Retry-After, 500, garbage (non-JSON) content, added latency, and a provider's concurrency limit
(a chat request beyond `max_concurrent` in flight gets 429 with Retry-After, as OpenAI's do). It
counts requests, the most that were ever in flight at once, and when chat calls came.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class JudgeFaults:
    rate_limit_every: int = 0  # every Nth chat request answers 429 (Retry-After: 0)
    server_error_every: int = 0  # every Nth chat request answers 500
    garbage_every: int = 0  # every Nth chat request answers text that is not JSON
    always: str | None = None  # "rate_limit" | "server_error" | "garbage" for every chat request
    latency_s: float = 0.0
    noisy: float = 0.0  # each verdict is 0 instead of 1 with this probability (seeded): a judge that varies between calls
    max_concurrent: int = 0  # a provider's concurrency limit: a chat request beyond this many in flight answers 429
    retry_after_s: float = 0.2  # the Retry-After those 429s carry
    basic_auth: str | None = None  # "user:password": every request without that Basic Authorization header gets 401
    # How verdicts are decided. None: always 1 (flipped by `noisy`). "coin": 0 or 1 by a hash of the call's input, so
    # uninformative yet the same on every run. "reads": a judge that reads its input: a claim (statement, answer,
    # reference) is supported when most of its words are in the context, and a statement is the answer itself.
    mode: str | None = None


@dataclass
class JudgeState:
    chat_requests: int = 0
    embedding_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    chat_in_flight: int = 0
    max_chat_served: int = 0  # the most chat requests served at once (a refused one is not served)
    statuses: Counter = field(default_factory=Counter)
    first_chat_t: float | None = None  # time.time() of the first and the latest chat request
    last_chat_t: float | None = None


class JudgeServer:
    def __init__(self, faults: JudgeFaults | None = None):
        self.faults = faults or JudgeFaults()
        self.state = JudgeState()
        self.lock = threading.Lock()
        self._random = random.Random(7)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> JudgeServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def flip(self) -> bool:
        with self.lock:
            return self._random.random() < self.faults.noisy

    def fault_for(self, n: int) -> str | None:
        f = self.faults
        if f.always:
            return f.always
        for kind, every in (("rate_limit", f.rate_limit_every), ("server_error", f.server_error_every), ("garbage", f.garbage_every)):
            if every and n % every == 0:
                return kind
        return None


def judge_flags(server: JudgeServer) -> list[str]:
    """The flags that point a run at this server as an openai/ judge (embeddings included)."""
    return ["--judge", "openai/judge", "--judge-base-url", f"{server.url}/v1", "--judge-embeddings", "openai/embed"]


def instance_of(schema: dict[str, Any], defs: dict[str, Any], name: str = "", flip=lambda: False, text=None) -> Any:
    """A small valid instance of a JSON schema: verdicts 1 (0 when `flip()` says so), 'noncommittal' 0, one item per list;
    `text(name)` may give a string field's content."""
    if "$ref" in schema:
        return instance_of(defs[schema["$ref"].split("/")[-1]], defs, name, flip, text)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return instance_of(schema[key][0], defs, name, flip, text)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {prop: instance_of(sub, defs, prop, flip, text) for prop, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [instance_of(schema.get("items", {"type": "string"}), defs, name, flip, text)]
    if kind == "integer":
        return 0 if name == "noncommittal" or flip() else 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    return (text and text(name)) or f"the {name or 'text'} as the judge sees it"


def judge_input(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The object a ragas prompt asks about: the JSON after its last 'input: ' (its examples come before)."""
    content = str(messages[-1].get("content", "")) if messages else ""
    start = content.rfind("input: {")
    if start == -1:
        return {}
    try:
        found, _ = json.JSONDecoder().raw_decode(content[start + len("input: ") :])
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def supported(claim: str, context: str) -> bool:
    """Most of the claim's words appear in the context."""
    words = set(re.findall(r"\w+", claim.lower()))
    return bool(words) and len(words & set(re.findall(r"\w+", context.lower()))) >= 0.6 * len(words)


def verdicts_for(mode: str, given: dict[str, Any]):
    """(flip, text) for instance_of under `mode`, from the call's input."""
    if mode == "coin":
        parity = int(hashlib.md5(json.dumps(given, sort_keys=True).encode()).hexdigest(), 16) % 2
        return (lambda: parity == 0), None
    context = given.get("context") or ""
    claims = given.get("statements") or [given.get("answer") or given.get("response") or ""]
    verdict = all(supported(str(claim), str(context)) for claim in claims) if context else True
    return (lambda: not verdict), (lambda name: given.get("answer") if name in ("statements", "statement") else None)


def _schema_in(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        start = text.find("{")
        while start != -1:
            try:
                candidate, _ = json.JSONDecoder().raw_decode(text[start:])
                if isinstance(candidate, dict) and ("properties" in candidate or "$defs" in candidate):
                    return candidate
            except json.JSONDecodeError:
                pass
            start = text.find("{", start + 1)
    return None


def _basic(credentials: str) -> str:
    import base64

    return "Basic " + base64.b64encode(credentials.encode()).decode()


def _vector(text: str, dims: int = 64) -> list[float]:
    vector = [0.1] * dims  # positive components: cosine similarities stay in (0, 1]
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def _handler_for(server: JudgeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if server.faults.basic_auth and self.headers.get("Authorization") != _basic(server.faults.basic_auth):
                return self._send(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error"}})
            with server.lock:
                server.state.in_flight += 1
                server.state.max_in_flight = max(server.state.max_in_flight, server.state.in_flight)
            try:
                if server.faults.latency_s and not self.path.endswith("/chat/completions"):
                    time.sleep(server.faults.latency_s)
                if self.path.endswith("/embeddings"):
                    return self._embeddings(body)
                if self.path.endswith("/chat/completions"):
                    return self._chat(body)
                self._send(404, {"error": {"message": "not found"}})
            finally:
                with server.lock:
                    server.state.in_flight -= 1

        def _chat(self, body):
            state = server.state
            with server.lock:
                state.chat_requests += 1
                n = state.chat_requests
                state.first_chat_t = state.first_chat_t or time.time()
                state.last_chat_t = time.time()
                over = server.faults.max_concurrent and state.chat_in_flight >= server.faults.max_concurrent
                if not over:
                    state.chat_in_flight += 1
                    state.max_chat_served = max(state.max_chat_served, state.chat_in_flight)
            if over:
                return self._rate_limited(str(server.faults.retry_after_s))
            try:
                return self._serve_chat(body, n)
            finally:
                with server.lock:
                    state.chat_in_flight -= 1

        def _rate_limited(self, retry_after: str):
            return self._send(
                429,
                {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}},
                {"Retry-After": retry_after},
            )

        def _serve_chat(self, body, n: int):
            if server.faults.latency_s:
                time.sleep(server.faults.latency_s)
            fault = server.fault_for(n)
            if fault == "rate_limit":
                return self._rate_limited("0")
            if fault == "server_error":
                return self._send(
                    500, {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}
                )
            schema = _schema_in(body.get("messages", []))
            if fault == "garbage" or schema is None:
                content = "I think the answer is mostly fine, but I cannot say more."
            else:
                flip, text = server.flip, None
                if server.faults.mode:
                    flip, text = verdicts_for(server.faults.mode, judge_input(body.get("messages", [])))
                content = json.dumps(instance_of(schema, schema.get("$defs", {}), flip=flip, text=text))
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            self._send(
                200,
                {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "judge"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(content.split()),
                        "total_tokens": prompt_tokens + len(content.split()),
                    },
                },
            )

        def _embeddings(self, body):
            with server.lock:
                server.state.embedding_requests += 1
            inputs = body.get("input", [])
            inputs = [inputs] if isinstance(inputs, str) else inputs
            data = [{"object": "embedding", "index": i, "embedding": _vector(str(text))} for i, text in enumerate(inputs)]
            tokens = sum(len(str(t).split()) for t in inputs)
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body.get("model", "embed"),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

        def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None):
            with server.lock:
                server.state.statuses[status] += 1
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
