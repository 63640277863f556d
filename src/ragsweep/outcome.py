"""How a run ended: one status, one exit code and one closing line, decided in one place.

A run either stopped early (a `Stop`: Ctrl-C, SIGTERM, the backend gone, the failure budget
spent) or went to its end, with or without problems found in the store afterwards.
"""

from __future__ import annotations

import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from . import errors
from .store import is_storage_full


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C, raised in the main thread by `interrupts`. Like KeyboardInterrupt it is not an Exception, so
    code that records failures as data (a judge call) cannot take it for one; unlike it, asyncio cancels the judge's
    tasks cleanly instead of tearing through its loop."""

    def __init__(self, signum: int):
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM: what a shell reports for a process the signal killed
        self.said = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


@dataclass(frozen=True)
class Stop:
    """Why a run ended before its last stage."""

    # as stored and printed: interrupted | stopped: backend unreachable | stopped: failure budget | failed: disk full | failed: storage
    status: str
    exit_code: int
    reason: str


def stop_from(error: BaseException) -> Stop:
    """The Stop for one of the exceptions `open_run` ends a run on."""
    if isinstance(error, KeyboardInterrupt):  # raised by Python's own handler, outside `interrupts`
        error = Interrupted(signal.SIGINT)
    if isinstance(error, Interrupted):
        return Stop("interrupted", error.exit_code, f"{error.said}: the remaining work was not done")
    if isinstance(error, errors.BackendUnavailableError):
        return Stop("stopped: backend unreachable", error.exit_code, str(error))
    if isinstance(error, errors.FailureBudgetExceededError):
        return Stop("stopped: failure budget", error.exit_code, str(error))
    if isinstance(error, (sqlite3.OperationalError, OSError)):  # storage mid-run: what finished is in the store already
        if is_storage_full(error):
            return Stop("failed: disk full", errors.EXIT_FAILURES, f"no space left to write results ({error}): free some space")
        return Stop("failed: storage", errors.EXIT_FAILURES, f"could not write results ({error})")
    raise TypeError(f"not a run-stopping error: {error!r}")


@dataclass(frozen=True)
class Outcome:
    """What run.json, the store and the closing line say about how a run ended."""

    status: str  # done | finished with failures | one of Stop's statuses
    exit_code: int  # 0 done, 1 failures, 3 backend unreachable, 130/143 interrupted
    planned: int  # samples the plan asked for
    answered: int  # samples with an answer
    failed: int  # samples that got an error instead
    reason: str | None  # what stopped the run or what failed, in words

    @property
    def resumable(self) -> bool:
        return self.status == "interrupted" or self.status.startswith(("stopped", "failed"))

    def line(self, run_id: str, wall_s: float, run_dir: Path) -> str:
        """The one line cron mails: status, answered of planned, where the results are, what to do next."""
        line = f"ragsweep {run_id}: {self.status}; {self.answered}/{self.planned} samples answered in {wall_s:.0f} s; results in {run_dir}"
        return line + (" — run the same command again to resume (finished work is reused)" if self.resumable else "")


def decide_outcome(stop: Stop | None, planned: int, answered: int, failed: int, problems: list[str]) -> Outcome:
    """A stop wins; else any problem (failed samples, a skipped model, unreleased memory, unjudged cells) is exit 1."""
    if stop is not None:
        return Outcome(stop.status, stop.exit_code, planned, answered, failed, stop.reason)
    if problems:
        return Outcome("finished with failures", errors.EXIT_FAILURES, planned, answered, failed, "; ".join(problems))
    return Outcome("done", errors.EXIT_OK, planned, answered, failed, None)
