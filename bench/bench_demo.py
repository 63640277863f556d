#!/usr/bin/env python
"""Run the demo matrix twice (cold, then fully cached) and print where the time goes.

Prints wall time, model loads, per-stage time, time inside model calls, load time, and the
harness overhead (everything else) as a share of wall time. Target: harness overhead <= 3 %.
Usage: python bench/bench_demo.py [--limit N] [extra benchmark.py flags]
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cli import latest_run_dir, run_cli  # noqa: E402


def run(results: Path, extra: list[str]) -> dict:
    start = time.perf_counter()
    done = run_cli("--quiet", "--results-dir", results, *extra, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"benchmark failed ({done.returncode}): {done.stderr.strip()}")
    run_dir = latest_run_dir(results)
    record = json.loads((run_dir / "run.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return {"process_s": elapsed, "timings": record["timings"], "events": events, "summary": done.stdout.strip()}


def report(label: str, result: dict) -> None:
    t = result["timings"]
    loads = [e for e in result["events"] if e["event"] == "model_load"]
    load_s = sum(e.get("load_s", 0.0) for e in loads)
    harness = t["wall_s"] - t["model_call_s"] - load_s
    print(f"{label}: {result['summary']}")
    print(f"  process wall {result['process_s']:.1f} s (incl. start-up, plan, report); sweep wall {t['wall_s']:.1f} s")
    print(f"  stages: retrieve {t['retrieve_s']:.1f} s, generate {t['generate_s']:.1f} s")
    print(f"  model loads: {len(loads)} ({', '.join(e['model'] for e in loads) or 'none'}), {load_s:.1f} s loading")
    print(f"  inside model calls: {t['model_call_s']:.1f} s = {t['model_call_s'] / max(t['wall_s'], 1e-9):.1%} of sweep wall")
    if t["model_call_s"] > 0:
        print(f"  harness overhead (sweep wall - calls - loads): {harness:.2f} s = {harness / max(t['wall_s'], 1e-9):.1%} (target <= 3 %)")
    else:
        print(f"  no model work (everything cached): {harness:.2f} s of bookkeeping")


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        cold = run(results, extra)
        report("cold run", cold)
        warm = run(results, extra)
        report("second identical run", warm)
        print(f"ratio cold/second process wall: {cold['process_s'] / warm['process_s']:.0f}x")


if __name__ == "__main__":
    main()
