#!/usr/bin/env python
"""3 LLMs x 3 embedding models x 100 questions against the Ollama emulator on an emulated 12 GB card.

Prints model loads (ragsweep's E + L against the seed's E x L loop), peak and baseline device
memory, out-of-memory errors, and harness time against time inside model calls. The emulator's
calls take ~2 ms, so the harness share here is an upper bound of what a real GPU run would see.
Usage: python bench/bench_ollama_emulator.py [--limit N]
"""

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cli import emulated_gpu_env, latest_run_dir, ollama_flags, run_cli  # noqa: E402
from ollama_emulator import EMBEDDINGS, LLMS, OllamaEmulator, seed_way  # noqa: E402

GB = 1e9


def ragsweep_run(limit: int) -> None:
    with OllamaEmulator() as emu, tempfile.TemporaryDirectory() as results:
        args = [
            *ollama_flags(emu),
            "--llms",
            ",".join(LLMS),
            "--embeddings",
            ",".join(EMBEDDINGS),
            "--limit",
            limit,
            "--results-dir",
            results,
            "--quiet",
        ]
        start = time.perf_counter()
        done = run_cli(*args, env=emulated_gpu_env(emu), timeout=3600)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"ragsweep failed ({done.returncode}): {done.stderr.strip()}")
        run_dir = latest_run_dir(Path(results))
        timings = json.loads((run_dir / "run.json").read_text())["timings"]
        ledger = list(csv.DictReader((run_dir / "memory.csv").open()))
        baselines = [int(r["device_used_bytes"]) for r in ledger if r["label"] == "after_unload"]
        requests = sum(emu.state.requests.values())
        print(f"ragsweep: {done.stdout.strip()}")
        print(
            f"  model loads: {sum(emu.state.loads.values())} (E + L = {len(EMBEDDINGS) + len(LLMS)}; the seed's loop would make "
            f"E x L = {len(EMBEDDINGS) * len(LLMS)} load requests)"
        )
        print(
            f"  peak device use {emu.state.peak_device_used / GB:.2f} GB of 12.88 (target <= 10); baseline after unloads max "
            f"{max(baselines) / GB:.2f} GB (target < 2)"
        )
        print(
            f"  out-of-memory errors: {emu.state.oom_errors}; evictions forced on Ollama: {emu.state.evictions}; HTTP requests: {requests}"
        )
        harness = timings["wall_s"] - timings["model_call_s"]
        print(
            f"  process wall {elapsed:.1f} s; sweep wall {timings['wall_s']:.1f} s; inside model calls {timings['model_call_s']:.1f} s; "
            f"harness {harness:.1f} s ({harness / timings['wall_s']:.0%} of sweep wall; {harness / requests * 1000:.1f} ms per request)"
        )


def seed_run() -> None:
    with OllamaEmulator() as emu:
        errors = seed_way(emu)
        print("seed's loop (E x L, default keep_alive, no unloads), one question per pair:")
        print(
            f"  model loads: {sum(emu.state.loads.values())}; evictions: {emu.state.evictions}; peak "
            f"{emu.state.peak_device_used / GB:.2f} GB; out-of-memory errors: {len(errors)}"
        )


if __name__ == "__main__":
    limit = int(sys.argv[sys.argv.index("--limit") + 1]) if "--limit" in sys.argv else 100
    ragsweep_run(limit)
    seed_run()
