"""A signal stops the run even when Python drops the exception its handler raised (inside a __del__ or a weakref callback)."""

import asyncio
import json
import signal
import sys
import types

import pytest

import benchmark
from cli import latest_run_dir
from echo_backend import EchoBackend, EchoModel
from ragsweep import backends
from ragsweep.interrupts import raise_if_signalled, stop_on_signals
from ragsweep.outcome import Interrupted


class SignalledWhileCollected:
    """Raises `signum` in its own __del__: the handler's exception is then 'ignored' by Python, as it was in Dask's
    WeakSet callback on a CI run, which went on to exit 0 after a SIGTERM."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        signal.raise_signal(self.signum)


@pytest.fixture(autouse=True)
def sigint_as_python_sets_it():
    """A suite started as a background job (`... &`, nohup) inherits SIGINT ignored, and stop_on_signals rightly keeps it
    ignored. These tests need Python's own Ctrl-C handler, as a run started from a terminal has."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def dropped(monkeypatch):
    """The exceptions Python dropped (printed as 'Exception ignored in ...')."""
    caught = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: caught.append(unraisable.exc_type))
    return caught


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_whose_exception_python_dropped_is_raised_at_the_next_check(dropped, signum):
    with stop_on_signals():
        SignalledWhileCollected(signum)  # collected at once: the signal is handled inside __del__
        assert dropped == [Interrupted]  # the handler did raise, and Python dropped it: the code went on
        with pytest.raises(Interrupted) as raised:
            raise_if_signalled()
    assert raised.value.exit_code == 128 + signum
    raise_if_signalled()  # the block is over: nothing is pending any more


def test_the_handlers_are_restored_and_a_sigint_the_shell_ignored_stays_ignored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            raise_if_signalled()  # ignored: nothing recorded
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("at_answer", [1, 6])
def test_a_sigterm_dropped_mid_generation_stops_the_run_at_the_next_answer_or_at_its_end(monkeypatch, dropped, tmp_path, at_answer):
    made = []

    class DropsASigterm(EchoModel):
        def generate(self, prompt):
            made.append(prompt)
            if len(made) == at_answer:
                SignalledWhileCollected(signal.SIGTERM)
            return super().generate(prompt)

    class Backend(EchoBackend):
        def load(self, info, options=None):
            return DropsASigterm(self, info)

    monkeypatch.setitem(backends.BACKENDS, "echo", Backend)
    questions = tmp_path / "testset.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is item {i} called?", "reference": "x", "reference_context_ids": ["d1"]} for i in range(6)]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "d1", "title": "Item", "text": "Item one is called one."}) + "\n")
    args = ["--backend", "echo", "--llms", "echo-llm", "--embeddings", "none", "--corpus", str(corpus), "--testset", str(questions)]
    code = benchmark.main([*args, "--results-dir", str(tmp_path / "r"), "--judge", "none", "--quiet"])
    record = json.loads((latest_run_dir(tmp_path / "r") / "run.json").read_text())
    assert Interrupted in dropped
    assert code == 143 and record["status"] == "interrupted"
    assert record["outcome"]["answered"] == at_answer  # the answer after the signal is never asked for


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_judge_call_stops_judging_and_is_not_recorded_as_a_failed_cell(tmp_path, signum):
    """Judge failures are data (NaN plus a cause), caught as Exception: a signal must not be one of them."""
    from ragsweep import judge as judge_stage
    from ragsweep.config import load_settings
    from ragsweep.judge_client import JudgeClient, JudgeSpec
    from ragsweep.platform import PlatformConfig
    from ragsweep.run import RunContext
    from ragsweep.runlog import RunLog
    from ragsweep.store import Store

    platform = PlatformConfig(
        "cpu", "test", 12 * 10**9, 64, 4, pressure_threshold_bytes=10**12, baseline_target_bytes=10**9, unload_timeout_s=5
    )
    store = Store(tmp_path / "db.sqlite")
    ctx = RunContext("r1", tmp_path, load_settings(None, {}, environ={}), platform, None, store, RunLog("r1", tmp_path, store, platform))
    spec = JudgeSpec("openai/x", "openai/e", None, concurrency=1, timeout_s=5, retries=0, parse_retries=0, max_tokens=2048)
    client = JudgeClient(spec)

    class Metric:
        async def ascore(self, **inputs):
            if inputs["question"] == "q1":
                signal.raise_signal(signum)  # handled on the run's thread while this call, and any begun beside it, is out
            await asyncio.sleep(0 if inputs["question"] == "q0" else 0.3)
            return types.SimpleNamespace(value=1.0)

    client.metrics = lambda: {"faithfulness": Metric()}
    cells = {f"k{i}": [judge_stage.Cell("bm25", "llm", f"q{i}", "faithfulness", 0, {"question": f"q{i}"}, f"k{i}")] for i in range(4)}
    cells_now = lambda: [cell for twins in cells.values() for cell in twins]  # noqa: E731
    with stop_on_signals(), pytest.raises(Interrupted) as raised:
        judge_stage.Judging(ctx, spec, client=client, source=cells_now).start(answers_done=True).finish()
    assert raised.value.exit_code == 128 + signum
    assert [j["value"] for j in store.judgements("r1")] == [1.0]  # q0 judged; q1 stopped, not a NaN
