"""Generation requests in flight: as many as the server serves at once, found by measurement.

Ollama decodes up to OLLAMA_NUM_PARALLEL requests of a model in one batch (1 by default since
v0.10.0) and queues the rest. We cannot ask it for that number, so `InFlightLimit` probes: it
doubles the requests in flight while the aggregate answers/s rises by at least `GAIN`, and settles
on the last level that paid as soon as it stops rising or the server's own durations show the
requests waiting for a slot (the idea of TCP Vegas: queueing shows in latency before it shows in
throughput). A 503 "server busy" halves it. `answer_concurrently` keeps that many requests running,
each on a daemon thread (a request hung past the watchdog never holds the process's exit), and
yields each result as it completes, so the caller alone writes the store. With one stream the
calls simply run in the caller's thread.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .backends.base import Backend, Generation, Prompt
from .errors import ModelCallError, ModelUnavailableError
from .interrupts import raise_if_signalled

MAX_IN_FLIGHT = 16  # the probe's ceiling when the user fixes nothing: Inspect uses 32 connections, ragas 16 workers
GAIN = 1.15  # a doubling must raise answers/s by 15 % to count: below that it is noise on a shared machine
QUEUED = 0.3  # the median request spent this share of its time waiting for a slot: the server is full (one extra request
# per slot waits about half its time, so this stops there, not after the queue has grown)


@dataclass(frozen=True)
class Found:
    """What the probe found for one model: the requests in flight and what they bought over one stream."""

    in_flight: int
    speedup: float | None  # aggregate answers/s against one stream; None when never measured
    probed: bool  # False: fixed by the setting or by the backend


class InFlightLimit:
    """How many requests to keep in flight. Fixed (a setting, a one-stream backend) or probed from 1 up to `ceiling`."""

    def __init__(self, ceiling: int = MAX_IN_FLIGHT, fixed: int | None = None):
        self.ceiling = fixed or ceiling
        self.current = fixed or 1
        self.settled = fixed is not None or self.ceiling == 1
        self._fixed = fixed is not None
        self._rates: dict[int, float] = {}  # in flight -> aggregate answers/s measured there
        self._window_start = time.monotonic()
        self._window: list[float] = []  # the queued share of each answer in this window

    def window_size(self) -> int:
        return max(4, 2 * self.current)

    def completed(self, answer: Generation) -> None:
        """One answer came back: when the window is full, double the level, or settle on the last one that paid."""
        if self.settled:
            return
        total = answer.seconds + answer.queued_s
        self._window.append(answer.queued_s / total if total > 0 else 0.0)
        if len(self._window) < self.window_size():
            return
        self._rates[self.current] = len(self._window) / max(time.monotonic() - self._window_start, 1e-9)
        previous = self._rates.get(self.current // 2)
        waited = statistics.median(self._window) > QUEUED
        if previous is not None and (waited or self._rates[self.current] < previous * GAIN):
            self._settle(self.current // 2)  # more requests only queued: the server had no free slot for them
        elif self.current >= self.ceiling:
            self._settle(self.current)
        else:
            self.current = min(self.current * 2, self.ceiling)
        self._window, self._window_start = [], time.monotonic()

    def busy(self) -> None:
        """The server said 503 (its queue is full): halve, and stop probing upward."""
        self.current = max(1, self.current // 2)
        self.settled = True

    def _settle(self, level: int) -> None:
        self.current, self.settled = level, True

    def found(self) -> Found:
        one = self._rates.get(1)
        here = self._rates.get(self.current)
        return Found(self.current, here / one if one and here else None, not self._fixed)


def in_flight_limit(backend: Backend, setting: int | None) -> InFlightLimit:
    """A server that serves several requests at once is probed (or fixed by the setting); any other backend gets one stream."""
    return InFlightLimit(fixed=setting) if backend.serves_concurrently else InFlightLimit(fixed=1)


Outcome = Generation | ModelCallError
BUSY_TRIES = 20  # a prompt the server refused as busy this often fails with cause busy (about 2 minutes of backoff)
BUSY_BACKOFF_S = 0.25  # the first wait before a refused prompt is sent again; doubled each time, at most 8 s


def answer_concurrently(
    call: Callable[[Prompt], Generation],
    prompts: dict[str, Prompt],
    limit: InFlightLimit,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[str, Outcome]]:
    """(key, answer or the call's error) for each prompt, in completion order, with `limit.current` requests in flight.

    A "server busy" refusal halves the limit and sends the prompt again: it is not an answer's failure. A
    ModelUnavailableError (the model cannot come back) or a signal ends the iteration by raising. With one stream at
    most, the calls run in the caller's thread, between its signal checks, as they always did.
    """
    todo, busy = deque(prompts), Counter()

    def ask(key: str) -> Generation:
        if busy[key]:
            time.sleep(min(BUSY_BACKOFF_S * 2 ** (busy[key] - 1), 8.0))  # refused as busy before: give the server's queue time
        return call(prompts[key])

    outcomes = _one_at_a_time(ask, todo, should_stop) if limit.ceiling == 1 else _in_flight(ask, todo, limit, should_stop)
    for key, outcome in outcomes:
        if isinstance(outcome, ModelUnavailableError) or not isinstance(outcome, (Generation, ModelCallError)):
            raise outcome
        if isinstance(outcome, ModelCallError) and outcome.cause == "busy":
            limit.busy()
            busy[key] += 1
            if busy[key] < BUSY_TRIES:
                todo.append(key)
                continue
        elif isinstance(outcome, Generation):
            limit.completed(outcome)
        yield key, outcome


def _one_at_a_time(ask, todo: deque, should_stop) -> Iterator[tuple[str, Outcome | BaseException]]:
    while todo and not should_stop():
        raise_if_signalled()
        key = todo.popleft()
        try:
            yield key, ask(key)
        except ModelCallError as error:
            yield key, error


def _in_flight(ask, todo: deque, limit: InFlightLimit, should_stop) -> Iterator[tuple[str, Outcome | BaseException]]:
    """Each request on a daemon thread of its own (a request hung past the watchdog never holds the process's exit);
    outcomes come back through a queue, so only the caller's thread touches what they feed."""
    results: queue.Queue[tuple[str, Outcome | BaseException]] = queue.Queue()
    running = 0

    def run(key: str) -> None:
        try:
            results.put((key, ask(key)))
        except BaseException as error:  # noqa: BLE001 (handed to the caller's thread, which decides)
            results.put((key, error))

    while todo or running:
        raise_if_signalled()
        while todo and running < limit.current and not should_stop():
            threading.Thread(target=run, args=(todo.popleft(),), daemon=True, name="ragsweep-request").start()
            running += 1
        if not running:
            return  # told to stop: what was not started stays unanswered
        try:
            key, outcome = results.get(timeout=0.2)
        except queue.Empty:
            continue
        running -= 1
        yield key, outcome
