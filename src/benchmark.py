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
import sys

from rich.console import Console

from ragsweep import cli, errors
from ragsweep.backends import get_backend
from ragsweep.cluster import backend_for, fill_answers, fill_embeddings
from ragsweep.cluster_scheduler import serve as serve_scheduler
from ragsweep.cluster_worker import serve
from ragsweep.config import Settings, load_env_file, load_settings
from ragsweep.errors import RagsweepError
from ragsweep.events import Event
from ragsweep.generation import generate
from ragsweep.judge import (
    judge,
    judging_beside,
    no_judge_hint,
    require_judge_packages,
    require_judge_reachable,
    require_same_judge,
    resolve_judge,
)
from ragsweep.judge_check import CHECK_PREFIX, DEFAULT_LABELS, estimate_line, print_check, run_check, write_check
from ragsweep.labels import load_judge_check_items, load_sample_labels
from ragsweep.lifecycle import clean_state
from ragsweep.lock import results_lock
from ragsweep.outcome import Interrupted, stop_from
from ragsweep.plan import Plan, make_plan, print_plan, print_settings
from ragsweep.platform import get_platform_config
from ragsweep.prompt import longest_prompt_bytes
from ragsweep.redact import redact
from ragsweep.report import print_outcome, write_exports
from ragsweep.retrieval import chunk_documents, retrieve_all
from ragsweep.retrievers import ORACLE
from ragsweep.run import new_run_id, open_check, open_run
from ragsweep.store import Store
from ragsweep.terminal import make_output_safe
from ragsweep.testset import load_corpus, load_questions


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    make_output_safe()  # cron's POSIX locale: ASCII look-alikes instead of a UnicodeEncodeError
    try:
        if argv[:1] == ["report"]:
            return report_command(cli.build_report_parser().parse_args(argv[1:]))
        if argv[:1] == ["worker"]:  # a GPU box serving a --cluster run
            return serve(cli.build_worker_parser().parse_args(argv[1:]))
        if argv[:1] == ["judge-check"]:  # how well the judge separates answers labelled good from bad
            return judge_check_command(cli.build_judge_check_parser().parse_args(argv[1:]))
        if argv[:1] == ["scheduler"]:  # the head's Dask scheduler, able to import ragsweep's tasks
            return serve_scheduler(cli.build_scheduler_parser().parse_args(argv[1:]))
        args = cli.build_parser().parse_args(argv)
        load_env_file()  # .env in the working directory; real environment variables win
        settings = load_settings(args.config, cli.settings_from(args))
        out = Console(quiet=args.quiet, width=None if sys.stdout.isatty() else 200)  # cron logs: no wrapping
        return sweep(settings, args, out)
    except RagsweepError as error:
        print(f"ragsweep: error: {redact(str(error))}", file=sys.stderr)
        return error.exit_code


def sweep(settings: Settings, args: argparse.Namespace, out: Console) -> int:
    # plan: everything that can fail fast fails here, before any model is loaded
    documents = load_corpus(settings.corpus)
    questions = load_questions(settings.testset, {d.id for d in documents}, settings.limit)
    chunks = chunk_documents(documents, settings.chunk_size, settings.chunk_overlap)
    platform = get_platform_config(**settings.platform_overrides())
    judge_spec = resolve_judge(settings, platform.judge_concurrency)
    if judge_spec:
        require_judge_packages()
        require_judge_reachable(judge_spec, settings)
    backend = backend_for(settings, platform.device)  # with --cluster: the GPU boxes of a Dask scheduler
    store = Store(settings.results_dir / "ragsweep.sqlite")
    if args.retry_failed:
        return retry_failed(settings, platform, backend, store, judge_spec, out)
    if settings.baseline and store.run(settings.baseline) is None:
        raise errors.ConfigError(f"--baseline {settings.baseline}: no such run in {store.path} (latest: {store.latest_run_id()})")
    plan = make_plan(
        backend,
        store,
        settings.embeddings,
        settings.llms,
        len(questions),
        len(chunks),
        judge_spec,
        settings.top_k,
        settings.generation_concurrency,
        settings.num_ctx,
        longest_prompt_bytes(questions, chunks, documents if ORACLE in settings.embeddings else [], settings.top_k),
        settings.max_tokens,
    )
    print_plan(plan, platform, out)
    if args.dry_run:
        print_settings(settings, out)
        return errors.EXIT_OK

    with open_run(settings, platform, backend, store, plan, questions, quiet=args.quiet) as run:
        clean_state(backend, run.log, "plan")  # nothing left over from before this run

        with judging_beside(run, plan.judge) as judging:  # a cloud or URL judge starts on each answer as it is stored
            with run.timed("retrieve_s"):  # retrieve: each embedding model loaded once (with --cluster, on a box, in parallel)
                fill_embeddings(run, plan.retrievers, chunks, questions)
                usable = retrieve_all(run, plan.retrievers, chunks, questions)

            with run.timed("generate_s"):  # generate: each LLM loaded once, answers under every retriever's contexts
                fill_answers(run, plan.llms, usable, questions)
                for llm in plan.llms:
                    generate(run, llm, usable, questions)

        with run.timed("judge_s"):  # judge: the tail after the last answer; an Ollama judge only now, alone in memory
            if judging:
                judging.finish()
            elif plan.judge:
                judge(run, plan.judge)
            else:
                run.note(f"LLM-judged metrics (RAGAS) skipped — {no_judge_hint(settings)}")

    # report: written on the way out of the run, whatever happened; here the screen's share
    print_outcome(run, out)
    return run.outcome.exit_code


def retry_failed(settings: Settings, platform, backend, store: Store, judge_spec, out: Console) -> int:
    """--retry-failed: re-judge only the failed cells of the latest run, in place, and rewrite its exports."""
    run_id = store.latest_run_id()
    if run_id is None:
        raise errors.ConfigError(f"--retry-failed: no run in {settings.results_dir} yet")
    if judge_spec is None:
        raise errors.ConfigError(f"--retry-failed needs a judge — {no_judge_hint(settings)}")
    stored = store.run(run_id)["plan"]
    require_same_judge(run_id, stored, judge_spec)
    plan = Plan.from_dict(stored, judge_spec)
    with open_run(settings, platform, backend, store, plan, quiet=out.quiet, run_id=run_id) as run:
        with run.timed("judge_s"):
            run.log.event(Event.RETRY_FAILED, "judge", judge_spec.model)
            judge(run, judge_spec, only_failed=True)
    print_outcome(run, out)
    return run.outcome.exit_code


def judge_check_command(args: argparse.Namespace) -> int:
    """`benchmark.py judge-check`: the judge scores labelled items; AUROC per metric, stored against the judge's identity."""
    load_env_file()
    settings = load_settings(args.config, cli.settings_from(args))
    labels = args.labels or DEFAULT_LABELS
    items = load_judge_check_items(labels, args.per_metric)
    platform = get_platform_config(**settings.platform_overrides())
    spec = resolve_judge(settings, platform.judge_concurrency)
    if spec is None:
        raise errors.ConfigError(f"judge-check needs a judge — {no_judge_hint(settings)}")
    require_judge_packages()
    require_judge_reachable(spec, settings)
    out = Console(quiet=args.quiet, width=None if sys.stdout.isatty() else 200)
    out.print(estimate_line(items, spec, labels), markup=False, highlight=False)
    if args.dry_run:
        return errors.EXIT_OK
    store = Store(settings.results_dir / "ragsweep.sqlite")
    check_id = CHECK_PREFIX + new_run_id()
    try:
        with open_check(settings, platform, get_backend(settings, platform.device), store, check_id, args.quiet) as ctx:
            rows, item_rows = run_check(ctx, spec, items)
    except (Interrupted, KeyboardInterrupt) as error:
        stop = stop_from(error)
        print(f"ragsweep {check_id}: {stop.reason}; judged items are cached — run the same command again to go on", file=sys.stderr)
        return stop.exit_code
    write_check(ctx.run_dir, spec.model, labels, rows, item_rows)
    store.put_judge_check(check_id, spec.model, spec.identity, str(labels), rows)
    print_check(rows, spec.model, out)
    failed = sum(row["failed"] for row in rows)
    said = f"{failed} failed (see judge_check_items.csv; run again to retry them)" if failed else "none failed"
    print(f"ragsweep {check_id}: {len(items)} labelled items judged, {said}; results in {ctx.run_dir}")
    return errors.EXIT_FAILURES if failed else errors.EXIT_OK


def report_command(args: argparse.Namespace) -> int:
    """`benchmark.py report [RUN_ID] [--baseline B] [--labels FILE] | --compare A B`: the exports again, from the store alone;
    --labels stores a person's labels of the run's samples first (the report corrects the judged scores by them)."""
    settings = load_settings(args.config, {"results_dir": args.results_dir})
    store = Store(settings.results_dir / "ragsweep.sqlite", create=False)  # reading never creates a database
    baseline, run_id = args.compare if args.compare else (args.baseline, args.run_id or store.latest_run_id())
    if run_id is None:
        raise errors.ConfigError(f"no run in {store.path} yet")
    for wanted in filter(None, (run_id, baseline)):
        if store.run(wanted) is None:
            raise errors.ConfigError(f"no run {wanted!r} in {store.path} (latest: {store.latest_run_id()})")
    with results_lock(settings.results_dir, f"report {run_id}"):  # a live run's exports are its own to write
        if args.labels:
            answered = {(s["embedding_model"], s["llm"], s["question_id"]) for s in store.samples(run_id) if not s["error"]}
            labelled = load_sample_labels(args.labels, answered)
            store.put_labels(run_id, [(x.embedding_model, x.llm, x.question_id, x.metric, x.label) for x in labelled])
        write_exports(store, run_id, settings.results_dir / run_id, baseline)
    print(f"reports for {run_id} rewritten in {settings.results_dir / run_id} (report.md, report.html)")
    return errors.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
