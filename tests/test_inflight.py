"""Requests in flight against the emulated Ollama's slots, over real HTTP: the probe finds the slots, a full queue is no failure."""

import pytest

from ollama_emulator import OllamaEmulator
from ragsweep.backends.base import Generation, GenerationOptions
from ragsweep.backends.ollama import OllamaBackend
from ragsweep.errors import ModelCallError
from ragsweep.inflight import InFlightLimit, answer_concurrently
from ragsweep.prompt import build_prompt

OPTIONS = GenerationOptions(max_tokens=8, temperature=0.0, seed=0, num_ctx=4096)


def answer_all(emu: OllamaEmulator, limit: InFlightLimit, n: int) -> dict:
    backend = OllamaBackend(emu.url, request_timeout_s=30, down_retry_s=5)
    model = backend.load(backend.describe("llama3.2:3b", "llm"), OPTIONS)
    prompts = {f"p{i}": build_prompt(f"What is item {i}?", [f"Item {i} is called number {i} in the list."]) for i in range(n)}
    try:
        return dict(answer_concurrently(model.generate, prompts, limit))
    finally:
        model.close()


@pytest.mark.parametrize("slots", [1, 4])
def test_the_probe_settles_on_the_servers_slots(slots):
    with OllamaEmulator(num_parallel=slots, call_s=0.05) as emu:
        limit = InFlightLimit()
        answers = answer_all(emu, limit, 60)
    assert len(answers) == 60 and all(isinstance(a, Generation) for a in answers.values())
    found = limit.found()
    assert found.in_flight == slots and found.probed
    assert emu.state.peak_decoding == slots  # the slots were really used, no more were asked for long
    if slots > 1:
        assert found.speedup > 1.8  # the emulator's batch gives about 2.8x at 4 streams


def test_latency_is_the_models_time_and_the_wait_for_a_slot_is_its_own_column():
    with OllamaEmulator(num_parallel=1, call_s=0.2) as emu:  # long enough that a loaded machine's jitter (~50 ms) does not count
        answers = answer_all(emu, InFlightLimit(fixed=3), 9)
    assert all(0.16 <= a.seconds <= 0.32 for a in answers.values())  # one stream's decode, never the queue
    waited = sorted(a.queued_s for a in answers.values())
    assert waited[0] < 0.12 and waited[-1] >= 0.32  # the third in line waited about two answers


def test_a_full_server_queue_is_retried_and_never_a_failed_answer():
    with OllamaEmulator(num_parallel=1, max_queue=1, call_s=0.05) as emu:  # one decoding, one waiting, the rest: 503
        limit = InFlightLimit(fixed=6)
        answers = answer_all(emu, limit, 12)
    assert emu.state.busy_errors > 0
    assert len(answers) == 12 and not any(isinstance(a, ModelCallError) for a in answers.values())
    assert limit.current < 6  # "server busy" halved the requests in flight
