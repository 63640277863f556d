#!/usr/bin/env python
"""ragsweep: benchmark every embedding model × every LLM over a QA test set, memory under control.

The story of a run: plan → retrieve → generate → judge → report. Each model is loaded once,
does all its work, is unloaded and its memory verified before the next one loads.
"""

from __future__ import annotations

import os

# Offline switches, before any library that reads them is imported.
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import logging
import platform as python_platform
import signal
import sys
import time
from pathlib import Path

from dotenv import load_dotenv
from rich.console import Console

from ragsweep import errors
from ragsweep.backends import get_backend
from ragsweep.config import Settings, load_settings
from ragsweep.errors import ModelCallError, RagsweepError
from ragsweep.generation import generate
from ragsweep.judge import judge, require_judge_packages, resolve_judge
from ragsweep.lifecycle import clean_state
from ragsweep.lock import results_lock
from ragsweep.plan import Plan, make_plan, print_plan
from ragsweep.platform import get_platform_config
from ragsweep.report import print_summary, write_exports
from ragsweep.retrieval import chunk_documents, retrieve
from ragsweep.run import RunContext, new_run_id
from ragsweep.runlog import RunLog
from ragsweep.store import Store
from ragsweep.testset import load_corpus, load_questions

JUDGE_HINT = "no judge: set OPENAI_API_KEY for gpt-4o-mini, or pass --judge ollama_chat/NAME (local) or --judge openai/NAME --judge-base-url URL"


class Interrupted(Exception):
    def __init__(self, exit_code: int):
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="YAML settings file (default: configs/demo.yaml)")
    p.add_argument("--backend", choices=["local", "ollama"])
    p.add_argument("--llms", help="comma-separated LLM names")
    p.add_argument("--embeddings", help="comma-separated embedding model names (bm25 = lexical)")
    p.add_argument("--corpus", help="corpus file (.jsonl, .csv, .parquet)")
    p.add_argument("--testset", help="test-set file (.jsonl, .csv, .parquet)")
    p.add_argument("--limit", type=int, help="use the first N questions")
    p.add_argument("--top-k", type=int, help="passages retrieved per question")
    p.add_argument("--judge", help="'none' or a LiteLLM model: gpt-4o-mini, ollama_chat/NAME, openai/NAME (with --judge-base-url)")
    p.add_argument("--judge-base-url", help="OpenAI-compatible server for openai/NAME judges (Ollama host for ollama_chat/)")
    p.add_argument("--judge-embeddings", help="LiteLLM embedding model for answer_relevancy")
    p.add_argument("--judge-concurrency", type=int, help="judge calls in flight, at most")
    p.add_argument("--max-judge-cost", type=float, help="USD: stop judging cleanly when reached")
    p.add_argument("--retry-failed", action="store_true", help="re-judge only the failed cells of the latest run")
    p.add_argument("--results-dir", help="where runs and the results database go")
    p.add_argument("--ollama-host", help="Ollama server URL (default: OLLAMA_HOST or http://localhost:11434)")
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, help="watchdog per model call, seconds (default 120 + 2 per max token)")
    p.add_argument("--max-failures", type=float, help="stop after N failed samples (or a share, e.g. 0.2)")
    p.add_argument("--fresh", action="store_true", default=None, help="ignore cached embeddings and answers")
    p.add_argument("--baseline", help="an earlier run id: report.html compares against it")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--quiet", action="store_true", help="print only the final summary line")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py report", description="Rebuild a run's reports from the store (no models needed).")
    p.add_argument("run_id", nargs="?", help="the run (default: the latest)")
    p.add_argument("--compare", nargs=2, metavar=("BASELINE", "RUN"), help="report RUN with per-metric deltas against BASELINE")
    p.add_argument("--baseline", help="compare against this earlier run")
    p.add_argument("--config", type=Path, help="YAML settings file (for results_dir)")
    p.add_argument("--results-dir", help="where runs and the results database are")
    return p


def report_command(argv: list[str]) -> int:
    """`benchmark.py report [RUN_ID] [--baseline B] | --compare A B`: the exports again, from the store alone."""
    args = build_report_parser().parse_args(argv)
    try:
        settings = load_settings(args.config, {"results_dir": args.results_dir})
        store = Store(settings.results_dir / "ragsweep.sqlite")
        baseline, run_id = args.compare if args.compare else (args.baseline, args.run_id or store.latest_run_id())
        for wanted in filter(None, (run_id, baseline)):
            if store.run(wanted) is None:
                raise errors.ConfigError(f"no run {wanted!r} in {store.path} (latest: {store.latest_run_id()})")
        if run_id is None:
            raise errors.ConfigError(f"no run in {store.path} yet")
        write_exports(store, run_id, settings.results_dir / run_id, baseline)
    except RagsweepError as error:
        print(f"ragsweep: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"reports for {run_id} rewritten in {settings.results_dir / run_id} (report.md, report.html)")
    return errors.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        return report_command(argv[1:])
    args = build_parser().parse_args(argv)
    load_dotenv()  # .env in the working directory; real environment variables win
    out = Console(quiet=args.quiet, width=None if sys.stdout.isatty() else 200)  # cron logs: no wrapping
    try:
        cli = {key: getattr(args, key) for key in Settings.model_fields if hasattr(args, key)}
        settings = load_settings(args.config, cli)
        return run(settings, args, out)
    except RagsweepError as error:
        print(f"ragsweep: error: {error}", file=sys.stderr)
        return error.exit_code


def run(settings: Settings, args: argparse.Namespace, out: Console) -> int:
    # plan: everything that can fail fast fails here
    documents = load_corpus(settings.corpus)
    questions = load_questions(settings.testset, {d.id for d in documents}, settings.limit)
    chunks = chunk_documents(documents, settings.chunk_size, settings.chunk_overlap)
    platform = get_platform_config(**settings.platform_overrides())
    judge_spec = resolve_judge(settings, platform.judge_concurrency)
    if judge_spec:
        require_judge_packages()
    backend = get_backend(settings.backend, platform.device, settings.ollama_host, settings.watchdog_s, settings.backend_retry_s)
    store = Store(settings.results_dir / "ragsweep.sqlite")
    if args.retry_failed:
        return _retry_failed(settings, platform, backend, store, judge_spec, args, out)
    if settings.baseline and store.run(settings.baseline) is None:
        raise errors.ConfigError(f"--baseline {settings.baseline}: no such run in {store.path} (latest: {store.latest_run_id()})")
    plan = make_plan(backend, store, settings.embeddings, settings.llms, len(questions), len(chunks), judge_spec, settings.top_k)
    print_plan(plan, platform, out)
    if args.dry_run:
        return errors.EXIT_OK

    run_id = new_run_id()
    with results_lock(settings.results_dir, run_id):
        ctx = _open_run(run_id, settings, platform, backend, store, args.quiet)
        store.start_run(run_id, settings.public_dict(), plan.as_dict(), platform.as_dict())
        store.add_questions(run_id, questions)
        ctx.failure_budget = _failure_budget(settings.max_failures, plan.samples)
        timings: dict[str, float] = {}
        try:
            exit_code = _sweep(ctx, plan, chunks, questions, timings)
        except (KeyboardInterrupt, Interrupted) as stop:
            exit_code = getattr(stop, "exit_code", errors.EXIT_SIGINT)
            ctx.note("run interrupted: the remaining work was not done")
        except (errors.BackendUnavailableError, errors.FailureBudgetExceededError) as stop:
            exit_code = stop.exit_code
            ctx.note(f"run stopped: {stop}")
            ctx.log.event("run_stopped", None, None, message=str(stop))
        summary, status = _close_run(ctx, plan, timings, exit_code)
    _print_outcome(ctx, summary, timings, status, exit_code, args.quiet, out)
    return exit_code


def _sweep(ctx: RunContext, plan: Plan, chunks, questions, timings: dict[str, float]) -> int:
    start = time.perf_counter()
    clean_state(ctx.backend, ctx.log, "plan")

    usable = []
    for retriever in plan.retrievers:  # retrieve: each embedding model loaded once
        try:
            retrieve(ctx, retriever, chunks, questions)
            usable.append(retriever.name)
        except ModelCallError as error:
            ctx.note(f"{retriever.name}: retrieval failed, its samples were skipped — {error}")
            ctx.log.event("model_failed", "retrieve", retriever.name, cause=error.cause, message=str(error))
    timings["retrieve_s"] = time.perf_counter() - start

    for llm in plan.llms:  # generate: each LLM loaded once, answers under every retriever's contexts
        generate(ctx, llm, usable, questions)
    timings["generate_s"] = time.perf_counter() - start - timings["retrieve_s"]
    timings["model_call_s"] = ctx.model_call_s  # retrieval and generation only: the harness-overhead figure

    judged_at = time.perf_counter()
    if plan.judge:  # judge: after all generation, so a local judge never shares memory with an LLM
        judge(ctx, plan.judge)
    else:
        ctx.note(f"LLM-judged metrics (RAGAS) skipped — {JUDGE_HINT}")
    timings["judge_s"] = time.perf_counter() - judged_at
    timings["wall_s"] = time.perf_counter() - start
    return _exit_code(ctx, failed_retrievers=len(plan.retrievers) - len(usable))


def _exit_code(ctx: RunContext, failed_retrievers: int = 0) -> int:
    """1 when anything failed. The report shows the details from the store (faults, judge errors), so nothing is noted twice."""
    unverified = any(e["event"] == "memory_not_released" for e in ctx.store.events(ctx.run_id))
    unjudged = any(j["value"] is None for j in ctx.store.judgements(ctx.run_id))
    return errors.EXIT_FAILURES if ctx.failures or failed_retrievers or unverified or unjudged else errors.EXIT_OK


def _retry_failed(settings, platform, backend, store: Store, judge_spec, args, out: Console) -> int:
    """Re-judge only the failed cells of the latest run, in place, and rewrite its exports."""
    run_id = store.latest_run_id()
    if run_id is None:
        raise errors.ConfigError(f"--retry-failed: no run in {settings.results_dir} yet")
    if judge_spec is None:
        raise errors.ConfigError(f"--retry-failed needs a judge — {JUDGE_HINT}")
    record = store.run(run_id)
    plan = Plan.from_dict(record["plan"], judge_spec)
    with results_lock(settings.results_dir, run_id):
        ctx = _open_run(run_id, settings, platform, backend, store, args.quiet)
        ctx.log.event("retry_failed", "judge", judge_spec.model)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        try:
            judge(ctx, judge_spec, only_failed=True)
            exit_code = _exit_code(ctx)
        except (KeyboardInterrupt, Interrupted) as stop:
            exit_code = getattr(stop, "exit_code", errors.EXIT_SIGINT)
        timings["judge_s"] = timings["wall_s"] = time.perf_counter() - start
        summary, status = _close_run(ctx, plan, timings, exit_code)
    _print_outcome(ctx, summary, timings, status, exit_code, args.quiet, out)
    return exit_code


def _failure_budget(max_failures: float | None, samples: int) -> int | None:
    """--max-failures: a count (>= 1) or a share of the planned samples (< 1)."""
    if max_failures is None:
        return None
    return max(1, round(max_failures * samples)) if max_failures < 1 else int(max_failures)


def _open_run(run_id: str, settings: Settings, platform, backend, store: Store, quiet: bool) -> RunContext:
    run_dir = settings.results_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to(run_dir / "run.log")
    backend.log_path = run_dir / "models.log"
    store.mark_abandoned_runs()  # we hold the lock: any run still "running" was killed
    _handle_sigterm()
    runlog = RunLog(run_id, run_dir, store, platform)
    if hasattr(backend, "on_retry"):
        backend.on_retry = lambda cause, message, attempt: runlog.event("retry", None, None, cause=cause, attempt=attempt, message=message)
    return RunContext(run_id, run_dir, settings, platform, backend, store, runlog, quiet=quiet)


def _close_run(ctx: RunContext, plan: Plan, timings: dict[str, float], exit_code: int) -> tuple[list[dict], str]:
    """Never leave a model resident; write the exports of what is done, whatever happened."""
    try:
        for info in ctx.backend.loaded():
            ctx.backend.unload(info.name)
    except RagsweepError as error:  # the backend itself is gone: nothing of ours is resident there to free
        ctx.log.event("cleanup_failed", None, None, message=str(error))
    status = {errors.EXIT_OK: "done", errors.EXIT_FAILURES: "finished with failures", errors.EXIT_BACKEND: "stopped: backend unreachable"}.get(exit_code, "interrupted")
    if exit_code == errors.EXIT_FAILURES and any(e["event"] == "run_stopped" for e in ctx.store.events(ctx.run_id)):
        status = "stopped: failure budget"
    summary = write_exports(ctx.store, ctx.run_id, ctx.run_dir, ctx.settings.baseline)
    _write_run_json(ctx, plan, timings, status, exit_code)
    ctx.store.finish_run(ctx.run_id, status, exit_code)
    ctx.log.close()
    return summary, status


def _handle_sigterm() -> None:
    def stop(signum, frame):
        raise Interrupted(errors.EXIT_SIGTERM)

    signal.signal(signal.SIGTERM, stop)


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("ragsweep")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)


def _write_run_json(ctx: RunContext, plan: Plan, timings: dict[str, float], status: str, exit_code: int) -> None:
    record = {
        "run_id": ctx.run_id,
        "status": status,
        "exit_code": exit_code,
        "config": ctx.settings.public_dict(),
        "platform": ctx.platform.as_dict(),
        "python": python_platform.python_version(),
        "versions": ctx.backend.versions(),
        "models": {m.name: {"kind": m.kind, "digest": m.digest, "license": m.license, "size_bytes": m.size_bytes, "source": m.source} for m in plan.retrievers + plan.llms},
        "plan": plan.as_dict(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    (ctx.run_dir / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


def _print_outcome(ctx: RunContext, summary, timings, status: str, exit_code: int, quiet: bool, out: Console) -> None:
    answered = sum(row["answered"] for row in summary)
    samples = sum(row["samples"] for row in summary)
    line = f"ragsweep {ctx.run_id}: {status}; {answered}/{samples} samples answered in {timings.get('wall_s', 0):.0f} s; results in {ctx.run_dir}"
    if not quiet:
        print_summary(summary, out)
        for note in ctx.notes:
            out.print(f"note: {note}")
        for event in ctx.store.events(ctx.run_id):
            if event["event"] == "memory_not_released":
                out.print(f"note: {event['model'] or 'clean-up'}: {event['message']}")
        unjudged = sum(1 for j in ctx.store.judgements(ctx.run_id) if j["value"] is None)
        if unjudged:
            out.print(f"note: {unjudged} judge cells failed (NaN): see judge_errors.csv; retry them with --retry-failed")
    if exit_code in (errors.EXIT_SIGINT, errors.EXIT_SIGTERM, errors.EXIT_BACKEND) or status.startswith("stopped"):
        line += " — run the same command again to resume (finished work is reused)"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
