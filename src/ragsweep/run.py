"""One run from lock to exit code: `open_run` opens it, the stages work inside, and the way out closes it.

Inside the block the results folder is locked, SIGTERM raises like Ctrl-C, and run.log and
events.jsonl are open. On the way out, whatever happened: every model is unloaded, the exports of
what finished are written, run.json and the status are stored, and `run.outcome` says how it ended.
"""

from __future__ import annotations

import json
import logging
import platform as python_platform
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.base import Backend, GenerationOptions
from .config import Settings
from .errors import BackendUnavailableError, FailureBudgetExceededError, RagsweepError
from .events import EVENTS_SCHEMA_VERSION, Event
from .interrupts import raise_if_signalled, stop_on_signals
from .lock import results_lock
from .outcome import Interrupted, Outcome, Stop, decide_outcome, stop_from
from .plan import DEFAULT_CTX
from .platform import PlatformConfig
from .redact import redact, redact_all
from .report import write_exports
from .runlog import RunLog
from .store import Store

if TYPE_CHECKING:
    from .plan import Plan

RUN_JSON_SCHEMA_VERSION = 2  # 2: schema_version, outcome (planned/answered/failed/reason)
STOPS = (KeyboardInterrupt, Interrupted, BackendUnavailableError, FailureBudgetExceededError, sqlite3.OperationalError, OSError)
RESUMABLE = ("interrupted", "stopped: backend unreachable", "stopped: failure budget", "failed: disk full", "failed: storage")


@dataclass
class RunContext:
    run_id: str
    run_dir: Path
    settings: Settings
    platform: PlatformConfig
    backend: Backend
    store: Store
    log: RunLog
    quiet: bool = False
    model_call_s: float = 0.0  # time spent inside model calls, for the harness-overhead figure
    failures: int = 0  # samples that got no answer
    failure_budget: int | None = None  # stop the run when this many samples failed
    notes: list[str] = field(default_factory=list)  # what was skipped or failed and why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, for run.json
    summary: list[dict[str, Any]] = field(default_factory=list)  # per combination, once the exports are written
    outcome: Outcome | None = None  # set when the run is closed
    reopened: dict[str, Any] | None = None  # the stored run a --retry-failed re-opened (its status before), else None
    num_ctx: dict[str, int] = field(default_factory=dict)  # the plan's context window per LLM
    prefilled: dict[str, Any] = field(default_factory=dict)  # answer cache key -> an answer a cluster box made uncacheable, or its error

    def count_failures(self, n: int, budgeted: bool = True) -> None:
        """Failed samples; past the budget the run stops (a model that cannot load is skipped, not budgeted)."""
        self.failures += n
        if budgeted and self.failure_budget is not None and self.failures >= self.failure_budget:
            raise FailureBudgetExceededError(
                f"{self.failures} samples failed, the --max-failures budget is {self.failure_budget}: stopping instead of grinding on"
            )

    def note(self, message: str, stage: str | None = None) -> None:
        """A line for the report; kept as an event so the report can be rebuilt from the store."""
        self.notes.append(redact(message))
        self.log.event(Event.NOTE, stage, message=message)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to timings[name] (seconds), even when it ends in an error."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def generation_options(self, llm: str) -> GenerationOptions:
        """What every request to `llm` sends; num_ctx is the plan's for that LLM."""
        s = self.settings
        num_ctx = self.num_ctx.get(llm) or s.num_ctx or DEFAULT_CTX
        return GenerationOptions(max_tokens=s.max_tokens, temperature=s.temperature, seed=s.seed, num_ctx=num_ctx)


def new_run_id() -> str:
    """Sortable by time, unique across runs started in the same second."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def failure_budget(max_failures: float | None, samples: int) -> int | None:
    """--max-failures: a count (>= 1) or a share of the planned samples (< 1)."""
    if max_failures is None:
        return None
    return max(1, round(max_failures * samples)) if max_failures < 1 else int(max_failures)


@contextmanager
def open_run(
    settings: Settings,
    platform: PlatformConfig,
    backend: Backend,
    store: Store,
    plan: Plan,
    questions: list | None = None,
    quiet: bool = False,
    run_id: str | None = None,
) -> Iterator[RunContext]:
    """A new run over `questions`, or (with `run_id`) an existing one re-opened in place, from lock to `ctx.outcome`."""
    reopened = store.run(run_id) if run_id else None
    run_id = run_id or new_run_id()
    with results_lock(settings.results_dir, run_id):
        ctx = _start(run_id, settings, platform, backend, store, quiet)
        ctx.reopened, ctx.num_ctx = reopened, plan.num_ctx
        if reopened is None:
            store.start_run(run_id, settings.public_dict(), plan.as_dict(), platform.as_dict())
            store.add_questions(run_id, questions or [])
        ctx.failure_budget = failure_budget(settings.max_failures, plan.samples)
        stop: Stop | None = None
        with stop_on_signals():
            try:
                with ctx.timed("wall_s"):
                    yield ctx
                raise_if_signalled()  # a signal whose exception Python dropped still stops the run
            except STOPS as error:
                stop = stop_from(error)
                _best_effort(ctx, "record the stop", lambda: ctx.note(f"run {stop.status}: {stop.reason}"))
                _best_effort(ctx, "record the stop", lambda: ctx.log.event(Event.RUN_STOPPED, reason=stop.status, message=stop.reason))
        _close(ctx, plan, stop)


@contextmanager
def open_check(settings: Settings, platform: PlatformConfig, backend: Backend, store: Store, check_id: str, quiet: bool = False):
    """A judge check: a run's lock, logs, signals and clean way out (no model left resident), without a run's samples,
    status or exports (it is not a run: `report` and --retry-failed never pick it)."""
    with results_lock(settings.results_dir, check_id):
        ctx = _start(check_id, settings, platform, backend, store, quiet)
        try:
            with stop_on_signals():
                yield ctx
                raise_if_signalled()
        finally:
            try:
                for info in backend.loaded():
                    backend.unload(info.name)
            finally:
                ctx.log.close()


def _start(run_id: str, settings: Settings, platform: PlatformConfig, backend: Backend, store: Store, quiet: bool) -> RunContext:
    run_dir = settings.results_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to(run_dir / "run.log")
    store.mark_abandoned_runs()  # we hold the lock: any run still "running" was killed
    runlog = RunLog(run_id, run_dir, store, platform, settings.memory_sample_s)
    backend.log_path = run_dir / "models.log"
    backend.on_retry = lambda cause, message, attempt: runlog.event(Event.RETRY, cause=cause, attempt=attempt, message=message)
    return RunContext(run_id, run_dir, settings, platform, backend, store, runlog, quiet=quiet)


def _close(ctx: RunContext, plan: Plan, stop: Stop | None) -> None:
    """Never leave a model resident; write what fits of the exports, whatever happened (a full disk included)."""
    try:
        for info in ctx.backend.loaded():
            ctx.backend.unload(info.name)
    except RagsweepError as error:  # the backend itself is gone: nothing of ours is resident there to free
        message = str(error)
        _best_effort(ctx, "log the clean-up", lambda: ctx.log.event(Event.CLEANUP_FAILED, message=message))
    ctx.timings["model_call_s"] = ctx.model_call_s  # retrieval and generation only: the harness-overhead figure
    answered, failed = ctx.store.answer_counts(ctx.run_id)
    ctx.outcome = decide_outcome(stop, plan.samples, answered, failed, _problems(ctx, plan))
    if ctx.reopened and stop is None and ctx.reopened["status"] in RESUMABLE and answered + failed < plan.samples:
        ctx.outcome = replace(ctx.outcome, status=ctx.reopened["status"])  # a retry does not make an unfinished run finished
    _best_effort(ctx, "store the status", lambda: ctx.store.finish_run(ctx.run_id, ctx.outcome.status, ctx.outcome.exit_code))
    _best_effort(
        ctx, "write the exports", lambda: setattr(ctx, "summary", write_exports(ctx.store, ctx.run_id, ctx.run_dir, ctx.settings.baseline))
    )
    _best_effort(ctx, "write run.json", lambda: _write_run_json(ctx, plan))
    ctx.log.close()


def _best_effort(ctx: RunContext, what: str, step) -> None:
    """Closing goes on when the disk is full or the database is locked: each step that fails is said once, in the notes."""
    try:
        step()
    except (sqlite3.Error, OSError) as error:
        ctx.notes.append(f"could not {what}: {error}")


def _problems(ctx: RunContext, plan: Plan) -> list[str]:
    """What makes a finished run exit 1, read from the store (so a re-opened run counts what it inherited)."""
    events = ctx.store.events(ctx.run_id)
    answered, failed = ctx.store.answer_counts(ctx.run_id)
    unjudged = sum(1 for j in ctx.store.judgements(ctx.run_id) if j["value"] is None)
    capped = sum(e.get("cells_left", 0) for e in events if e["event"] == Event.JUDGE_COST_CAP)
    problems = [f"{failed} samples failed"] if failed else []
    problems += [f"{plan.samples - answered - failed} samples never answered"] if answered + failed < plan.samples else []
    problems += [f"{capped} judge cells not judged (--max-judge-cost)"] if capped else []
    problems += [f"{e['model']}: {e['stage']} failed" for e in events if e["event"] == Event.MODEL_FAILED and e["stage"] == "retrieve"]
    problems += ["memory did not come back after an unload"] if any(e["event"] == Event.MEMORY_NOT_RELEASED for e in events) else []
    return problems + ([f"{unjudged} judge cells failed (NaN)"] if unjudged else [])


# The judge's libraries log each failed call at ERROR. Python's last-resort handler printed those on stderr, one or two
# lines per failed cell, which flooded cron mail under --quiet. The cell's cause is data already; its wording goes to run.log.
LIBRARY_LOGGERS = ("instructor", "ragas", "LiteLLM")


class _Redacted(logging.Filter):
    """A library's message may carry a URL with a password: masked like everything else ragsweep writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_Redacted())
    for name in ("ragsweep", *LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        for previous in logger.handlers:  # the last run's file, in a process that runs several
            previous.close()
        logger.handlers[:], logger.propagate = [handler], False
    logging.getLogger("ragsweep").setLevel(logging.INFO)


def _write_run_json(ctx: RunContext, plan: Plan) -> None:
    """run.json: what ran and how it ended. A --retry-failed keeps the run's own record and adds itself to `retries`."""
    outcome = ctx.outcome
    summary = {"planned": outcome.planned, "answered": outcome.answered, "failed": outcome.failed, "reason": outcome.reason}
    timings = {k: round(v, 3) for k, v in ctx.timings.items()}
    path = ctx.run_dir / "run.json"
    if ctx.reopened and path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
        retry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "judge": plan.judge.model if plan.judge else None,
            "status": outcome.status,
            "exit_code": outcome.exit_code,
            "outcome": summary,
            "timings": timings,
        }
        record["retries"] = [*record.get("retries", []), retry]
        path.write_text(json.dumps(redact_all(record), indent=2), encoding="utf-8")
        return
    record = {
        "schema_version": RUN_JSON_SCHEMA_VERSION,
        "events_schema_version": EVENTS_SCHEMA_VERSION,
        "run_id": ctx.run_id,
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "outcome": summary,
        "config": ctx.settings.public_dict(),
        "platform": ctx.platform.as_dict(),
        "python": python_platform.python_version(),
        "versions": ctx.backend.versions(),
        "models": {
            m.name: {"kind": m.kind, "digest": m.digest, "license": m.license, "size_bytes": m.size_bytes, "source": m.source}
            for m in plan.retrievers + plan.llms
        },
        "plan": plan.as_dict(),
        "timings": timings,
    }
    (ctx.run_dir / "run.json").write_text(json.dumps(redact_all(record), indent=2), encoding="utf-8")
