#!/usr/bin/env python
"""How long the judge check of the default labelled set takes: `benchmark.py judge-check` as a user runs it, against the
test judge (a process of its own that reads its input and answers at once), so the seconds are ragsweep's own: the
harness, ragas, LiteLLM. Prints the items, the judge calls and the seconds, cold (every item a call) and again (every
item from the judge cache).

Usage: python bench/bench_judge_check.py [--limit N]   (N labelled items per metric; default: all 600)
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
from judge_server import JudgeFaults, JudgeServer
with JudgeServer(JudgeFaults(mode="reads")) as judge:
    print(judge.url, flush=True)
    for _ in sys.stdin:
        print(judge.state.chat_requests, judge.state.embedding_requests, flush=True)
"""


def counts(server: subprocess.Popen) -> tuple[int, int]:
    server.stdin.write("?\n")
    server.stdin.flush()
    chat, embeddings = server.stdout.readline().split()
    return int(chat), int(embeddings)


def main() -> None:
    limit = ["--limit", sys.argv[sys.argv.index("--limit") + 1]] if "--limit" in sys.argv else []
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    flags = ["--judge", "openai/judge", "--judge-base-url", f"{url}/v1", "--judge-embeddings", "openai/embed"]
    with tempfile.TemporaryDirectory() as results:
        for label in ("cold", "cached"):
            before = counts(server)
            start = time.perf_counter()
            command = [sys.executable, str(ROOT / "src" / "benchmark.py"), "judge-check", *limit, *flags, "--results-dir", results]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            after = counts(server)
            if done.returncode not in (0, 1):
                sys.exit(f"judge-check failed ({done.returncode}): {done.stderr.strip()}")
            items = next(line for line in done.stdout.splitlines() if line.startswith("ragsweep judge-check-")).split(": ")[1]
            chat, embeddings = after[0] - before[0], after[1] - before[1]
            print(f"{label}: {items.split(' judged')[0]}; {chat} chat + {embeddings} embedding calls in {seconds:.1f} s")
            if label == "cold":
                print("\n".join(line for line in done.stdout.splitlines() if line.startswith(("│", "┃"))))
    server.stdin.close()
    server.wait()


if __name__ == "__main__":
    main()
