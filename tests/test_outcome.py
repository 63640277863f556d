"""How a run ended: the one function that decides status and exit code, and the closing line."""

import signal
import sqlite3
from pathlib import Path

import pytest

from ragsweep import errors
from ragsweep.outcome import Interrupted, Stop, decide_outcome, stop_from


@pytest.mark.parametrize(
    "stop, problems, status, code",
    [
        (None, [], "done", 0),
        (None, ["2 samples failed"], "finished with failures", 1),
        (None, ["memory did not come back after an unload"], "finished with failures", 1),
        (stop_from(errors.FailureBudgetExceededError("5 failed")), ["5 samples failed"], "stopped: failure budget", 1),
        (stop_from(errors.BackendUnavailableError("gone")), [], "stopped: backend unreachable", 3),
        (stop_from(KeyboardInterrupt()), ["1 samples failed"], "interrupted", 130),
        (stop_from(Interrupted(signal.SIGTERM)), [], "interrupted", 143),
        (stop_from(Interrupted(signal.SIGINT)), [], "interrupted", 130),
        (stop_from(sqlite3.OperationalError("database or disk is full")), [], "failed: disk full", 1),
        (stop_from(OSError(28, "No space left on device")), [], "failed: disk full", 1),
    ],
)
def test_a_stop_wins_over_problems_and_problems_over_done(stop, problems, status, code):
    outcome = decide_outcome(stop, planned=5, answered=2, failed=1, problems=problems)
    assert (outcome.status, outcome.exit_code) == (status, code)
    assert outcome.reason == (stop.reason if stop else ("; ".join(problems) or None))


def test_the_closing_line_counts_answered_of_planned_and_says_how_to_resume():
    stopped = decide_outcome(Stop("interrupted", 130, "Ctrl-C"), planned=5, answered=2, failed=0, problems=[])
    line = stopped.line("r1", 12.4, Path("results/r1"))
    assert (
        line == "ragsweep r1: interrupted; 2/5 samples answered in 12 s; results in results/r1 — run the same command again to "
        "resume (finished work is reused)"
    )
    assert "resume" not in decide_outcome(None, 5, 4, 1, ["1 samples failed"]).line("r1", 1, Path("x"))


def test_only_run_stopping_errors_become_stops():
    with pytest.raises(TypeError):
        stop_from(ValueError("a bug is not a stop"))
