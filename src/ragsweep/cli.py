"""The command line: `benchmark.py [flags]` runs a sweep, `benchmark.py report …` rebuilds reports from the store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .config import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py", description="Benchmark every embedding model × every LLM over a QA test set, memory under control."
    )
    p.add_argument("--config", type=Path, help="YAML settings file (default: configs/demo.yaml)")
    p.add_argument("--backend", choices=list(BACKENDS))
    p.add_argument("--llms", help="comma-separated LLM names")
    p.add_argument("--embeddings", help="comma-separated embedding model names (bm25 = lexical)")
    p.add_argument("--corpus", help="corpus file (.jsonl, .csv, .parquet)")
    p.add_argument("--testset", help="test-set file (.jsonl, .csv, .parquet)")
    p.add_argument("--limit", type=int, help="use the first N questions")
    p.add_argument("--top-k", type=int, help="passages retrieved per question")
    p.add_argument("--num-ctx", type=int, help="each LLM's context window in tokens (default 4096): the prompt and the answer must fit")
    p.add_argument(
        "--generation-concurrency", type=int, help="generation requests in flight per LLM (default: found by measurement on Ollama)"
    )
    add_judge_flags(p)
    p.add_argument("--judge-repeats", type=int, help="judge each cell N times to measure the judge's noise (default 1)")
    p.add_argument("--max-judge-cost", type=float, help="USD: stop judging cleanly when reached")
    p.add_argument("--retry-failed", action="store_true", help="re-judge only the failed cells of the latest run")
    p.add_argument("--results-dir", help="where runs and the results database go")
    p.add_argument("--ollama-host", help="Ollama server URL (default: OLLAMA_HOST or http://localhost:11434)")
    p.add_argument(
        "--server-command", help="--backend server: launch one OpenAI-compatible server per model, e.g. 'vllm serve {model} --port {port}'"
    )
    p.add_argument("--server-url", help="--backend server: an OpenAI-compatible server someone else runs (its /v1/models are the names)")
    p.add_argument(
        "--server-start-timeout", dest="server_start_timeout_s", type=float, help="seconds a launched server may take to answer (600)"
    )
    p.add_argument(
        "--request-timeout", dest="request_timeout_s", type=float, help="watchdog per model call, seconds (default 120 + 2 per max token)"
    )
    p.add_argument("--max-failures", type=float, help="stop after N failed samples (or a share, e.g. 0.2)")
    p.add_argument("--fresh", action="store_true", default=None, help="ignore cached embeddings and answers")
    p.add_argument("--baseline", help="an earlier run id: report.html compares against it")
    p.add_argument("--cluster", help="Dask scheduler address (tcp://HEAD:8786): run model stages on its GPU boxes")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--quiet", action="store_true", help="print only the final summary line")
    return p


def add_judge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", help="'none' or a LiteLLM model: gpt-4o-mini, ollama_chat/NAME, openai/NAME (with --judge-base-url)")
    p.add_argument("--judge-base-url", help="OpenAI-compatible server for openai/NAME judges (Ollama host for ollama_chat/)")
    p.add_argument("--judge-embeddings", help="LiteLLM embedding model for answer_relevancy")
    p.add_argument("--judge-concurrency", type=int, help="judge calls in flight, at most")


def build_judge_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py judge-check",
        description="How well does this judge separate answers labelled good from answers labelled bad? AUROC per metric.",
    )
    p.add_argument("--labels", type=Path, help="labelled items, JSON Lines (default: the bundled HaluEval QA set, 2,400 items)")
    p.add_argument("--limit", dest="per_metric", type=int_in(1, 10**9), help="the first N labelled items of each metric")
    add_judge_flags(p)
    p.add_argument("--config", type=Path, help="YAML settings file (judge settings, results_dir)")
    p.add_argument("--results-dir", help="where the check and the results database go")
    p.add_argument("--ollama-host", help="Ollama server URL, for an ollama_chat/ judge")
    p.add_argument("--dry-run", action="store_true", help="print the check's plan (calls, cost) and exit")
    p.add_argument("--quiet", action="store_true", help="print only the closing line")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py report", description="Rebuild a run's reports from the store (no models needed).")
    p.add_argument("run_id", nargs="?", help="the run (default: the latest)")
    p.add_argument("--compare", nargs=2, metavar=("BASELINE", "RUN"), help="report RUN with per-metric deltas against BASELINE")
    p.add_argument("--baseline", help="compare against this earlier run")
    p.add_argument(
        "--labels", type=Path, help="your own labels of this run's samples (JSON Lines): summary.csv gets scores corrected by them (PPI)"
    )
    p.add_argument("--config", type=Path, help="YAML settings file (for results_dir)")
    p.add_argument("--results-dir", help="where runs and the results database are")
    return p


def build_scheduler_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py scheduler", description="The Dask scheduler of a --cluster run, from ragsweep's own environment."
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: boxes come through SSH tunnels)")
    p.add_argument("--port", type=int_in(1, 65535), default=8786, help="the port to listen on (default 8786)")
    p.add_argument("--tls-ca-file", help="Dask TLS: the CA that signed every certificate of the cluster")
    p.add_argument("--tls-cert", help="Dask TLS: this scheduler's certificate")
    p.add_argument("--tls-key", help="Dask TLS: this scheduler's private key")
    return p


def build_worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py worker", description="Serve this GPU box to a ragsweep cluster run (a Dask worker).")
    p.add_argument("scheduler", help="the Dask scheduler's address, e.g. tcp://127.0.0.1:8786 through an SSH tunnel")
    p.add_argument("--name", required=True, help="this box's name in the ledger and the report")
    p.add_argument("--gpus", type=int_in(1, 1024), default=1, help="model stages this box runs at once (one per card it gives)")
    p.add_argument("--backend", choices=list(BACKENDS), help="where this box's models run (default: the head's --backend)")
    p.add_argument("--ollama-host", help="this box's Ollama (default: OLLAMA_HOST, else http://localhost:11434)")
    p.add_argument(
        "--port", type=int_in(1, 65535), help="listen on 127.0.0.1:PORT, for a reverse SSH tunnel (ssh -R PORT:127.0.0.1:PORT head)"
    )
    p.add_argument(
        "--connect-timeout", type=int_in(1, 7 * 24 * 3600), default=60, help="seconds to wait for the scheduler at start (default 60)"
    )
    p.add_argument("--tls-ca-file", help="Dask TLS: the CA that signed the scheduler's and this box's certificates")
    p.add_argument("--tls-cert", help="Dask TLS: this box's certificate")
    p.add_argument("--tls-key", help="Dask TLS: this box's private key")
    return p


def int_in(low: int, high: int):
    """An argparse type: a whole number from low to high, or argparse's one-line error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that are settings (None where not given, so lower layers show through)."""
    return {key: getattr(args, key) for key in Settings.model_fields if hasattr(args, key)}
