#!/usr/bin/env python
"""One sweep on 1, 2 and 4 emulated GPU boxes: 4 LLMs × 2 embedding models × 50 questions, on a real Dask scheduler.

Each box is a real `benchmark.py worker` process with its own Ollama emulator (answers take
CALL_S each, as a slow model would). Prints the generation stage's wall time and speed-up per box
count (target: ≥ 0.8 × boxes), and the cluster path's overhead per answer against the same sweep
in-process (target: ≤ 10 ms). Usage: python bench/bench_cluster.py
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import distributed  # noqa: E402

from cli import command, emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli  # noqa: E402
from conftest import DEMO  # noqa: E402
from ollama_emulator import OllamaEmulator  # noqa: E402

CALL_S = 0.05  # seconds an emulated answer takes
LLMS, EMBEDDINGS, QUESTIONS = "llama3.2:3b,qwen2.5:7b,mistral:7b,phi3:mini", "nomic-embed-text,all-minilm", 50
SWEEP = [*matrix(LLMS, EMBEDDINGS, QUESTIONS), "--corpus", DEMO / "corpus.jsonl", "--testset", DEMO / "testset.jsonl", "--quiet"]


def timings(results: Path) -> tuple[dict, int]:
    record = json.loads((latest_run_dir(results) / "run.json").read_text())
    return record["timings"], record["outcome"]["answered"]


def on_boxes(count: int) -> tuple[float, int]:
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", scheduler_port=0, dashboard_address=None
    ) as cluster:
        emulators = [OllamaEmulator(call_s=CALL_S).start() for _ in range(count)]
        boxes = [
            subprocess.Popen(
                command("worker", cluster.scheduler_address, "--name", f"box-{i}", "--backend", "ollama", "--ollama-host", emu.url),
                env=emulated_gpu_env(emu),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i, emu in enumerate(emulators)
        ]
        try:
            with distributed.Client(cluster.scheduler_address) as client:
                client.wait_for_workers(count, timeout=120)
            with tempfile.TemporaryDirectory() as results:
                done = run_cli(
                    "--backend", "ollama", "--cluster", cluster.scheduler_address, *SWEEP, "--results-dir", results, timeout=1800
                )
                if done.returncode != 0:
                    sys.exit(f"cluster run on {count} boxes failed ({done.returncode}): {done.stderr.strip()[-500:]}")
                spent, answered = timings(Path(results))
        finally:
            for box in boxes:
                box.kill()
            for emu in emulators:
                emu.stop()
    return spent["generate_s"], answered


def in_process() -> tuple[float, int]:
    with OllamaEmulator(call_s=CALL_S) as emu, tempfile.TemporaryDirectory() as results:
        done = run_cli(*ollama_flags(emu), *SWEEP, "--results-dir", results, env=emulated_gpu_env(emu), timeout=1800)
        if done.returncode != 0:
            sys.exit(f"in-process run failed: {done.stderr.strip()[-500:]}")
        spent, answered = timings(Path(results))
    return spent["generate_s"], answered


def main() -> None:
    alone, answered = in_process()
    print(
        f"{LLMS.count(',') + 1} LLMs × {EMBEDDINGS.count(',') + 1} embedding models × {QUESTIONS} questions = {answered} samples; "
        f"an answer takes {CALL_S * 1000:.0f} ms on a box"
    )
    print(f"  in-process (no cluster): generation {alone:.1f} s")
    base = None
    for count in (1, 2, 4):
        seconds, _ = on_boxes(count)
        base = base or seconds
        speedup = base / seconds
        verdict = "PASS" if speedup >= 0.8 * count else "FAIL"
        boxes = f"{count} box{'es' if count > 1 else '  '}"
        print(f"  {boxes}: generation {seconds:.1f} s, speed-up {speedup:.2f}× (target ≥ {0.8 * count:.1f}×: {verdict})")
        if count == 1:
            overhead = (seconds - alone) / answered * 1000
            verdict = "PASS" if overhead <= 10 else "FAIL"
            print(f"    cluster overhead per answer vs in-process: {overhead:+.1f} ms (target ≤ 10 ms: {verdict})")


if __name__ == "__main__":
    main()
