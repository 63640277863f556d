#!/usr/bin/env python
"""How long a local model process takes to be ready: a fresh `spawn` interpreter (before) against the forkserver with torch
and sentence-transformers preloaded (now). Each model is loaded and closed N times in each way, alternating, in one run.

The forkserver's own start (its imports) is paid once per ragsweep process, while the plan runs; it is printed apart.
Usage: python bench/bench_model_start.py [--loads N] [--model all-minilm-l6-v2|smollm2-135m]
"""

import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ragsweep.backends import local  # noqa: E402
from ragsweep.backends.base import GenerationOptions  # noqa: E402
from ragsweep.backends.local import LocalBackend, LocalProcessModel  # noqa: E402


def ready_s(backend: LocalBackend, name: str, context) -> float:
    info = backend.describe(name, local.LOCAL_MODELS[name].kind)
    options = GenerationOptions(max_tokens=8, temperature=0.0, seed=0, num_ctx=2048) if info.kind == "llm" else None
    local.model_processes = lambda engine: context  # the way model processes are made, for this load
    start = time.perf_counter()
    model = backend.load(info, options)
    seconds = time.perf_counter() - start
    model.close()
    assert isinstance(model, LocalProcessModel)
    return seconds


def main() -> None:
    loads = int(sys.argv[sys.argv.index("--loads") + 1]) if "--loads" in sys.argv else 3
    name = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "all-minilm-l6-v2"
    made = local.model_processes
    start = time.perf_counter()
    forkserver = made(local.LOCAL_MODELS[name].engine)
    first = ready_s(LocalBackend("cpu", 120), name, forkserver)  # includes waiting for the forkserver's preload
    print(f"{name}: forkserver started and first model ready in {time.perf_counter() - start:.2f} s ({first:.2f} s for the load)")
    spawn, forked = [], []
    for _ in range(loads):
        spawn.append(ready_s(LocalBackend("cpu", 120), name, multiprocessing.get_context("spawn")))
        forked.append(ready_s(LocalBackend("cpu", 120), name, forkserver))
    a, b = statistics.median(spawn), statistics.median(forked)
    print(f"  spawn (before):     median {a:.2f} s, min {min(spawn):.2f}, max {max(spawn):.2f} over {loads} loads")
    print(f"  forkserver (now):   median {b:.2f} s, min {min(forked):.2f}, max {max(forked):.2f}")
    print(f"  ratio spawn / forkserver: {a / b:.1f}x")


if __name__ == "__main__":
    main()
