#!/usr/bin/env python
"""Every slot busy: the same judged sweep against an emulated Ollama with 1 slot and with 4, and a judge that allows 16 calls.

The emulator decodes up to OLLAMA_NUM_PARALLEL requests at once, each slower as streams share the
batch (about 2.8x aggregate at 4 streams); the test judge answers 429 with Retry-After above 16
calls in flight. Prints, per server: generation time, the requests in flight found, the judge's
most calls in flight, the share of 429s, how much of the judging overlapped generation, and the
tail after the last answer; then the 4-slot / 1-slot ratio of the time spent answering (goal >= 2.2x), and of the
whole generation stage, whose model loads and verified unloads do not get faster with slots.
The tail target: max(3 s, 1.5 x the floor), the floor being the judge's calls x their latency / 16.
Usage: python bench/bench_slots.py [--limit N] [--answer-s S] [--judge-s S]
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cli import emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli  # noqa: E402
from judge_server import JudgeFaults, JudgeServer, judge_flags  # noqa: E402
from ollama_emulator import OllamaEmulator  # noqa: E402

PROVIDER_LIMIT = 16  # calls in flight the judge's provider allows


def option(name: str, default: float) -> float:
    return float(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def judged_sweep(slots: int, limit: int, answer_s: float, judge_s: float) -> dict:
    faults = JudgeFaults(latency_s=judge_s, max_concurrent=PROVIDER_LIMIT, retry_after_s=0.2)
    with OllamaEmulator(num_parallel=slots, call_s=answer_s) as emu, JudgeServer(faults) as judge, tempfile.TemporaryDirectory() as out:
        args = [*ollama_flags(emu), *matrix("llama3.2:3b,qwen2.5:7b", "bm25,oracle", limit), *judge_flags(judge)]
        done = run_cli(*args, "--results-dir", out, "--quiet", "--judge-concurrency", "64", env=emulated_gpu_env(emu), timeout=3600)
        if done.returncode != 0:
            sys.exit(f"ragsweep failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        run_dir = latest_run_dir(Path(out))
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        generate_ends = [e["t"] for e in events if e["event"] == "stage_end" and e["stage"] == "generate"]
        generate_starts = [e["t"] for e in events if e["event"] == "stage_start" and e["stage"] == "generate"]
        judge_end = next(e for e in events if e["event"] == "stage_end" and e["stage"] == "judge")
        last_answer, first_call = max(generate_ends), judge.state.first_chat_t
        refused = judge.state.statuses[429]
        calls = judge.state.chat_requests - refused
        return {
            "generate_s": max(generate_ends) - min(generate_starts),
            "answering_s": sum(e["wall_s"] for e in events if e["event"] == "throughput"),
            "in_flight": [e["in_flight"] for e in events if e["event"] == "throughput"],
            "judge_peak": judge.state.max_chat_served,
            "refused_share": refused / max(judge.state.chat_requests, 1),
            "overlap_s": max(0.0, last_answer - first_call),
            "tail_s": judge_end["t"] - last_answer,
            "floor_s": calls * judge_s / PROVIDER_LIMIT,
            "calls": calls,
        }


def main() -> None:
    limit = int(option("--limit", 40))
    answer_s, judge_s = option("--answer-s", 0.1), option("--judge-s", 0.05)
    print(f"2 LLMs x (bm25, oracle) x {limit} questions; {answer_s} s an answer alone; judge {judge_s} s a call, {PROVIDER_LIMIT} allowed")
    runs = {}
    for slots in (1, 4):
        start = time.perf_counter()
        runs[slots] = r = judged_sweep(slots, limit, answer_s, judge_s)
        print(
            f"  {slots} slot{'s' if slots > 1 else ''}: generation {r['generate_s']:.1f} s (answering {r['answering_s']:.1f} s, the "
            f"rest loads and verified unloads), in flight found {r['in_flight']}; "
            f"judge: {r['calls']} calls, at most {r['judge_peak']} in flight, {r['refused_share']:.1%} refused with 429 "
            f"(target <= 15 %), overlapped generation by {r['overlap_s']:.1f} s, tail after the last answer {r['tail_s']:.1f} s "
            f"(target <= {max(3.0, 1.5 * r['floor_s']):.1f} s); whole command {time.perf_counter() - start:.1f} s"
        )
    answering = runs[1]["answering_s"] / runs[4]["answering_s"]
    stage = runs[1]["generate_s"] / runs[4]["generate_s"]
    print(f"answering, 4 slots vs 1: {answering:.2f}x (goal >= 2.2x; the emulator's ceiling is about 2.8x)")
    print(f"whole generation stage (loads and unload checks included), 4 slots vs 1: {stage:.2f}x")


if __name__ == "__main__":
    main()
