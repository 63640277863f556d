#!/usr/bin/env python
"""What the memory sampler costs: the time of one read against its interval, while a real model is resident.

The sampler thread reads memory every `memory_sample_s` (default 1 s) while a model is resident.
Target: under 0.5 % of wall time. Reads the local backend with the real all-MiniLM-L6-v2 in its
child process (RSS of the model process, psutil, NVML where present).
Usage: python bench/bench_sampler.py [--reads N]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ragsweep.backends.local import LocalBackend  # noqa: E402
from ragsweep.memory import MemorySampler, monitor_gpu_memory  # noqa: E402
from ragsweep.platform import get_platform_config  # noqa: E402

TARGET_SHARE = 0.005
INTERVAL_S = 1.0


def main(reads: int) -> None:
    platform = get_platform_config()
    backend = LocalBackend(platform.device, request_timeout_s=120)
    model = backend.load(backend.describe("all-minilm-l6-v2", "embedding"))
    try:
        before = monitor_gpu_memory("retrieve", "before_load", backend, platform)
        start = time.perf_counter()
        for _ in range(reads):
            monitor_gpu_memory("retrieve", "sample", backend, platform, "all-minilm-l6-v2")
        per_read = (time.perf_counter() - start) / reads
        with MemorySampler(backend, platform, "retrieve", "all-minilm-l6-v2", before, interval_s=0.05) as sampler:
            embed_start = time.perf_counter()
            for _ in range(20):
                model.embed(["a sentence to embed while the sampler reads"] * 32)
            embedding_s = time.perf_counter() - embed_start
    finally:
        model.close()
    share = per_read / INTERVAL_S
    source = "present" if before.device_used_bytes else "absent"
    verdict = "PASS" if share < TARGET_SHARE else "FAIL"
    print(f"one read: {per_read * 1000:.2f} ms on {platform.device} ({reads} reads; NVML {source})")
    print(f"  at memory_sample_s = {INTERVAL_S:.0f} s: {share:.3%} of wall time — target < {TARGET_SHARE:.1%}: {verdict}")
    print(f"  live: {len(sampler.samples)} samples at 0.05 s during {embedding_s:.2f} s of embedding (20 batches of 32)")


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--reads") + 1]) if "--reads" in sys.argv else 200)
