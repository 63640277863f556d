#!/usr/bin/env python
"""The harness's own CPU per judge call: RAGAS's four metrics through ragsweep's JudgeClient (LiteLLM, instructor) against
the test judge, which answers at once from a process of its own, so the CPU measured here is all ours. Target: <= 10 ms a
call (a call: one HTTP request the judge's provider sees, chat or embeddings).

Usage: python bench/bench_judge_cpu.py [--cells N] [--model openai/NAME] [--profile [cumulative|tottime]]
(--model: a name LiteLLM cannot price, such as openai/judge, adds its slow search for a price to every call)
"""

import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from ragsweep.config import load_settings  # noqa: E402
from ragsweep.judge import Cell, Judging, cell_key  # noqa: E402
from ragsweep.judge_client import JudgeSpec  # noqa: E402
from ragsweep.metrics import JUDGE_INPUTS  # noqa: E402
from ragsweep.platform import PlatformConfig  # noqa: E402
from ragsweep.run import RunContext  # noqa: E402
from ragsweep.runlog import RunLog  # noqa: E402
from ragsweep.store import Store  # noqa: E402


def cells_from_demo(spec: JudgeSpec, n: int) -> list[Cell]:
    questions = [json.loads(line) for line in (ROOT / "data/demo/testset.jsonl").read_text().splitlines()]
    passages = {d["id"]: d["text"] for d in map(json.loads, (ROOT / "data/demo/corpus.jsonl").read_text().splitlines())}
    cells = []
    for i in range(n):
        q = questions[i % len(questions)]
        contexts = [passages[c] for c in q["reference_context_ids"]][:3]
        base = {
            "user_input": q["question"] + f" ({i})",
            "response": q["reference"],
            "retrieved_contexts": contexts,
            "reference": q["reference"],
        }
        metric = list(JUDGE_INPUTS)[i % 4]
        inputs = {k: v for k, v in base.items() if k in JUDGE_INPUTS[metric]}
        cells.append(Cell("bm25", "llm", f"q{i}", metric, 0, inputs, cell_key(spec, metric, inputs, 0)))
    return cells


SERVE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from judge_server import JudgeServer
with JudgeServer() as judge:
    print(judge.url, flush=True)
    for _ in sys.stdin:  # each line the bench writes: how many requests so far
        print(judge.state.chat_requests + judge.state.embedding_requests, flush=True)
"""


def requests_so_far(server: subprocess.Popen) -> int:
    server.stdin.write("?\n")
    server.stdin.flush()
    return int(server.stdout.readline())


MODEL = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "openai/gpt-4o-mini"  # priced: a cloud user's path


def main() -> None:
    n = int(sys.argv[sys.argv.index("--cells") + 1]) if "--cells" in sys.argv else 200
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as tmp:
        spec = JudgeSpec(MODEL, "openai/text-embedding-3-small", f"{url}/v1", 16, 30, 0, 0, 2048, start_concurrency=16)
        platform = PlatformConfig("cpu", "bench", 10**10, 64, 4, 10**12, 10**9, 5)
        store = Store(Path(tmp) / "db.sqlite")
        ctx = RunContext(
            "r", Path(tmp), load_settings(None, {}, environ={}), platform, None, store, RunLog("r", Path(tmp), store, platform)
        )
        ctx.quiet = True
        warm = Judging(ctx, spec, source=lambda: cells_from_demo(spec, 8))  # imports ragas, litellm, instructor: not per call
        warm.start(answers_done=True).finish()
        cells = cells_from_demo(spec, n)
        judging = Judging(ctx, spec, source=lambda: [c for c in cells])
        calls_before = requests_so_far(server)
        cpu, wall = time.process_time(), time.perf_counter()
        if "--profile" in sys.argv:
            profiler = cProfile.Profile()
            judging._answers_done.set()
            profiler.runcall(judging._run)  # on this thread, so the profiler sees it
        else:
            judging.start(answers_done=True).finish()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        calls = requests_so_far(server) - calls_before
    server.stdin.close()
    server.wait()
    print(f"{MODEL}: {n} cells, {calls} judge calls (chat + embeddings): {cpu:.2f} s CPU, {wall:.2f} s wall")
    print(f"harness CPU per call: {cpu / calls * 1000:.1f} ms (target <= 10 ms)")
    if "--profile" in sys.argv:
        pstats.Stats(profiler).sort_stats(
            sys.argv[sys.argv.index("--profile") + 1] if sys.argv[-1] != "--profile" else "cumulative"
        ).print_stats(60)


if __name__ == "__main__":
    main()
