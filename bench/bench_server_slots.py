#!/usr/bin/env python
"""The server backend at 1 and at 4 requests in flight: the same sweep (1 LLM, bm25, N questions, no judge), each in a
fresh results folder so nothing is cached, against
- an emulated OpenAI-compatible server with 4 parallel slots (tests/openai_server.py, launched by --server-command:
  what vLLM or `llama-server --parallel 4` look like), and
- llama-cpp-python's real server over SmolLM2-135M, which answers one request at a time (no parallel slots).
Prints answers/s for each and the ratio. Goal on the emulator: >= 2.2x (its ceiling is about 2.8x).

Usage: python bench/bench_server_slots.py [--questions N] [--real-questions M]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from ragsweep.backends.local import model_path  # noqa: E402


def answers_per_s(command: str, llm: str, questions: int, in_flight: int) -> float:
    with tempfile.TemporaryDirectory() as results:
        args = ["--backend", "server", "--server-command", command, "--llms", llm, "--embeddings", "bm25", "--judge", "none"]
        args += ["--limit", str(questions), "--generation-concurrency", str(in_flight), "--results-dir", results, "--quiet"]
        done = subprocess.run([sys.executable, str(ROOT / "src" / "benchmark.py"), *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the sweep failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
        (run_json,) = Path(results).glob("*/run.json")
        record = json.loads(run_json.read_text())
        return record["outcome"]["answered"] / record["timings"]["generate_s"]


def compare(label: str, command: str, llm: str, questions: int) -> None:
    one, four = (answers_per_s(command, llm, questions, n) for n in (1, 4))
    print(f"{label}: {questions} questions; 1 in flight {one:.2f} answers/s, 4 in flight {four:.2f} answers/s: {four / one:.2f}x")


def main() -> None:
    questions = int(sys.argv[sys.argv.index("--questions") + 1]) if "--questions" in sys.argv else 40
    real = int(sys.argv[sys.argv.index("--real-questions") + 1]) if "--real-questions" in sys.argv else 10
    emulated = f"{sys.executable} {ROOT / 'tests' / 'openai_server.py'} --model {{model}} --port {{port}} --parallel 4 --call-s 0.25"
    compare("emulated server, 4 slots", emulated, "emulated-7b", questions)
    served = f"{sys.executable} -m llama_cpp.server --model {{model}} --port {{port}} --n_ctx 2048"
    compare("llama-cpp-python server (serial), SmolLM2-135M", served, str(model_path("smollm2-135m")), real)


if __name__ == "__main__":
    main()
