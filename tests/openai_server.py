"""An OpenAI-compatible server with parallel slots, for the server backend's bench and tests: what vLLM or
`llama-server --parallel N` look like from outside, without a GPU.

    python tests/openai_server.py --model NAME --port PORT [--parallel 4] [--call-s 0.2]

GET /v1/models lists the one model; POST /v1/chat/completions decodes up to --parallel requests at once, each slower as
streams share the batch (the Ollama emulator's cost, about 2.8x aggregate at 4), the rest wait for a slot; the answer
is the last word of the prompt, with `usage` token counts. It runs as a launched server: SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ollama_emulator import SHARED_BATCH_COST


class Slots:
    def __init__(self, parallel: int, call_s: float):
        self.parallel, self.call_s = parallel, call_s
        self.decoding = self.peak = 0
        self.free = threading.Condition()

    def decode(self) -> None:
        with self.free:
            while self.decoding >= self.parallel:
                self.free.wait()
            self.decoding += 1
            self.peak = max(self.peak, self.decoding)
            seconds = self.call_s * (1 + SHARED_BATCH_COST * (self.decoding - 1))
        try:
            time.sleep(seconds)
        finally:
            with self.free:
                self.decoding -= 1
                self.free.notify()


def handler_for(model: str, slots: Slots):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "emulator"}]})
            self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            if body.get("model") != model:
                return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            slots.decode()
            prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
            words = prompt.split() or ["nothing"]
            answer = words[-1].strip("?.!,")
            self._send(
                200,
                {
                    "id": "chatcmpl-emulated",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(words), "completion_tokens": 1, "total_tokens": len(words) + 1},
                },
            )

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--call-s", type=float, default=0.2)
    args = p.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler_for(args.model, Slots(args.parallel, args.call_s)))
    server.daemon_threads = True
    print(f"serving {args.model} on {args.host}:{args.port} with {args.parallel} slots", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
