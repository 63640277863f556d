"""RAGAS judging through LiteLLM against a test-owned OpenAI-compatible judge server."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli import emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli
from conftest import REPO
from judge_server import JudgeFaults, JudgeServer, judge_flags
from ollama_emulator import OllamaEmulator
from ragsweep.judge_client import classify

METRICS = ["faithfulness", "answer_relevancy", "context_precision", "context_recall"]
SECRET = "sk-test-" + "A" * 24  # must never reach logs or results


def run(emu, judge, results: Path, *extra, config: Path | None = None) -> subprocess.CompletedProcess:
    env = emulated_gpu_env(emu, OPENAI_API_KEY=SECRET)
    args = [
        *ollama_flags(emu),
        *matrix("llama3.2:3b,qwen2.5:7b", "nomic-embed-text", 3),
        "--results-dir",
        str(results),
        "--quiet",
        "--judge",
        "openai/gpt-4o-mini",
        "--judge-base-url",
        f"{judge.url}/v1",
        "--judge-embeddings",
        "openai/embed",
        *extra,
    ]
    if config:
        args += ["--config", str(config)]
    return run_cli(*args, env=env)


def latest(results: Path) -> Path:
    return latest_run_dir(results)


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


@pytest.fixture
def strict(tmp_path) -> Path:
    """No retries: one fault fails its cell, so causes map one to one."""
    path = tmp_path / "strict.yaml"
    path.write_text(
        f"judge_retries: 0\njudge_parse_retries: 0\ncorpus: {REPO / 'data/demo/corpus.jsonl'}\ntestset: "
        f"{REPO / 'data/demo/testset.jsonl'}\n"
    )
    return path


def test_clean_judge_scores_every_sample_in_range_and_a_second_run_is_free(emulator, tmp_path):
    with JudgeServer() as judge:
        first = run(emulator, judge, tmp_path)
        assert first.returncode == 0, first.stderr
        assert "Provider List" not in first.stdout + first.stderr and first.stdout.count("\n") == 1  # --quiet: one line for cron
        samples = rows(latest(tmp_path) / "samples.csv")
        assert len(samples) == 6
        for sample in samples:
            for metric in METRICS:
                assert 0.0 <= float(sample[metric]) <= 1.0, (metric, sample[metric])
        assert rows(latest(tmp_path) / "judge_errors.csv") == []
        calls = judge.state.chat_requests
        # 6 + k judge calls per distinct cell set (k = 3): the emulator's two LLMs answer alike, and
        # context_precision/recall never depend on the LLM, so each question is judged once
        assert calls == 3 * (6 + 3)
        second = run(emulator, judge, tmp_path)
        assert second.returncode == 0 and judge.state.chat_requests == calls  # all cells cached: zero calls
    report = (latest(tmp_path) / "report.md").read_text()
    assert "## Judge (openai/gpt-4o-mini)" in report and "Failed cells by cause: none" in report


@pytest.mark.parametrize("fault, cause", [("rate_limit", "rate_limit"), ("server_error", "server_error"), ("garbage", "parse_error")])
def test_each_fault_becomes_nan_with_its_cause(emulator, tmp_path, strict, fault, cause):
    with JudgeServer(JudgeFaults(always=fault)) as judge:
        result = run(emulator, judge, tmp_path, config=strict)
    assert result.returncode == 1 and "6/6 samples answered" in result.stdout  # the run finishes
    run_dir = latest(tmp_path)
    assert result.stderr == ""  # --quiet: the libraries' per-call errors go to run.log, not to cron mail
    assert fault != "server_error" or "ERROR instructor.v2.retry API call failed" in (run_dir / "run.log").read_text()
    errors = rows(run_dir / "judge_errors.csv")
    assert len(errors) == 6 * 4 and {e["cause"] for e in errors} == {cause}
    assert set(errors[0]) == {"question_id", "embedding_model", "llm", "metric", "repeat", "cause", "message"}
    samples = rows(run_dir / "samples.csv")
    assert all(s[m] == "" for s in samples for m in METRICS)  # NaN is an empty cell, never a made-up score
    summary = rows(run_dir / "summary.csv")
    assert all(float(row["faithfulness_nan_rate"]) == 1.0 for row in summary)


def test_a_per_metric_timeout_applies_to_that_metric_only(emulator, tmp_path):
    config = tmp_path / "timeouts.yaml"
    config.write_text(
        f"judge_metric_timeout_s: {{faithfulness: 0.05}}\ncorpus: {REPO / 'data/demo/corpus.jsonl'}\ntestset: "
        f"{REPO / 'data/demo/testset.jsonl'}\n"
    )
    with JudgeServer(JudgeFaults(latency_s=0.1)) as judge:
        result = run(emulator, judge, tmp_path, config=config)
    assert result.returncode == 1
    errors = rows(latest(tmp_path) / "judge_errors.csv")
    assert {(e["metric"], e["cause"]) for e in errors} == {("faithfulness", "timeout")} and len(errors) == 6
    assert all(s["context_recall"] for s in rows(latest(tmp_path) / "samples.csv"))


def test_mixed_faults_with_retries_finish_and_nan_cells_equal_error_rows(emulator, tmp_path):
    faults = JudgeFaults(rate_limit_every=4, server_error_every=5, garbage_every=7)
    with JudgeServer(faults) as judge:
        result = run(emulator, judge, tmp_path)
        assert 429 in judge.state.statuses and 500 in judge.state.statuses
    assert result.returncode in (0, 1), result.stderr
    run_dir = latest(tmp_path)
    nan_cells = sum(1 for s in rows(run_dir / "samples.csv") for m in METRICS if s[m] == "")
    assert nan_cells == len(rows(run_dir / "judge_errors.csv"))
    scored = [float(s[m]) for s in rows(run_dir / "samples.csv") for m in METRICS if s[m] != ""]
    assert len(scored) >= 12 and all(0.0 <= v <= 1.0 for v in scored)  # retries recovered most cells


@pytest.mark.parametrize("cap", [1, 3])
def test_in_flight_calls_never_exceed_the_cap(emulator, tmp_path, cap):
    with JudgeServer(JudgeFaults(latency_s=0.03)) as judge:
        result = run(emulator, judge, tmp_path, "--judge-concurrency", str(cap))
        assert result.returncode == 0, result.stderr
        assert judge.state.max_in_flight <= cap
        if cap > 1:
            assert judge.state.max_in_flight > 1  # the cap is used, not just respected


def test_retry_failed_rejudges_only_the_failed_cells(emulator, tmp_path, strict):
    with JudgeServer(JudgeFaults(garbage_every=3)) as judge:
        first = run(emulator, judge, tmp_path, config=strict)
        assert first.returncode == 1
        failed = len(rows(latest(tmp_path) / "judge_errors.csv"))
        assert 0 < failed < 24
        judge.faults.garbage_every = 0
        before = judge.state.chat_requests
        retry = run(emulator, judge, tmp_path, "--retry-failed", config=strict)
        assert retry.returncode == 0, retry.stderr
        made = judge.state.chat_requests - before
    assert rows(latest(tmp_path) / "judge_errors.csv") == []
    assert 0 < made <= failed * (6 + 3)  # only the failed cells were asked again
    report = (latest(tmp_path) / "report.md").read_text()
    assert "Failed cells by cause: none" in report and "retry them" not in report  # no stale note from the first pass
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1  # in place: no new run
    record = json.loads((latest(tmp_path) / "run.json").read_text())
    assert record["status"] == "finished with failures" and record["timings"]["generate_s"] > 0  # the run's own record is kept
    [retry_record] = record["retries"]
    assert retry_record["status"] == "done" and retry_record["exit_code"] == 0 and "judge_s" in retry_record["timings"]
    events = [json.loads(line) for line in (latest(tmp_path) / "events.jsonl").read_text().splitlines()]
    assert [e["model"] for e in events if e["event"] == "retry_failed"] == ["openai/gpt-4o-mini"]  # cron sees the retry begin


def test_retry_failed_keeps_an_unfinished_run_unfinished_and_refuses_another_judge(emulator, tmp_path):
    from ollama_emulator import Fault

    emulator.add_fault(Fault("/api/chat", 400, "bad request", count=100, when="work"))
    with JudgeServer() as judge:
        stopped = run(emulator, judge, tmp_path, "--max-failures", "2")
        assert stopped.returncode == 1 and "stopped: failure budget" in stopped.stdout
        retry = run(emulator, judge, tmp_path, "--retry-failed")
        other = run(emulator, judge, tmp_path, "--retry-failed", "--judge", "openai/judge")
    assert retry.returncode == 1, retry.stderr
    assert "stopped: failure budget; 0/6 samples answered" in retry.stdout  # not "done", and counted against the plan
    assert json.loads((latest(tmp_path) / "run.json").read_text())["status"] == "stopped: failure budget"
    assert other.returncode == 2 and "was judged by openai/gpt-4o-mini, not by openai/judge" in other.stderr


def test_max_judge_cost_is_checked_before_every_call_and_the_unjudged_cells_fail_the_run(emulator, tmp_path):
    with JudgeServer() as judge:
        result = run(emulator, judge, tmp_path, "--max-judge-cost", "0.0000001", "--judge-concurrency", "1")
        calls = judge.state.chat_requests
    assert result.returncode == 1, result.stderr
    assert calls == 1  # the first call spent the cap: no other call was made, not even the rest of its own cell
    report = (latest(tmp_path) / "report.md").read_text()
    assert "the --max-judge-cost cap ($0.0000)" in report
    unjudged = int(report.split(" judge cells not judged")[0].rsplit(": ", 1)[1])
    assert unjudged == 3 * 4 * 2 and "finished with failures" in json.loads((latest(tmp_path) / "run.json").read_text())["status"]
    assert f"{unjudged} judge cells not judged (--max-judge-cost)" in json.dumps(json.loads((latest(tmp_path) / "run.json").read_text()))


def test_a_cost_cap_on_a_judge_without_a_price_is_refused_at_the_plan(emulator, tmp_path):
    with JudgeServer() as judge:
        args = [*ollama_flags(emulator), "--llms", "llama3.2:3b", "--embeddings", "bm25", "--results-dir", tmp_path, "--dry-run"]
        result = run_cli(*args, *judge_flags(judge), "--max-judge-cost", "1", env=emulated_gpu_env(emulator))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--max-judge-cost: LiteLLM has no price for the judge openai/judge, so the cap could never apply" in result.stderr


def test_no_secret_reaches_logs_or_results(emulator, tmp_path):
    with JudgeServer() as judge:
        assert run(emulator, judge, tmp_path).returncode == 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".sqlite":
            assert SECRET not in path.read_text(errors="ignore"), path
    assert SECRET.encode() not in (tmp_path / "ragsweep.sqlite").read_bytes()


def test_no_network_other_than_the_configured_judge(emulator, tmp_path, monkeypatch, capsys):
    """In-process, every socket connect is recorded: only the emulator and the judge, on loopback."""
    import benchmark

    connects = []
    recording = {"on": True}

    def audit(event, args):
        if event == "socket.connect" and recording["on"]:
            connects.append(args[1])

    sys.addaudithook(audit)
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "fake_gpu"))
    with JudgeServer() as judge:
        code = benchmark.main(
            [
                "--backend",
                "ollama",
                "--ollama-host",
                emulator.url,
                *matrix("llama3.2:3b", "all-minilm", 2),
                "--results-dir",
                str(tmp_path),
                "--quiet",
                *judge_flags(judge),
            ]
        )
    recording["on"] = False
    assert code == 0, capsys.readouterr().err
    hosts = {address[0] if isinstance(address, tuple) else address for address in connects}
    assert hosts == {"127.0.0.1"}, hosts
    ports = {address[1] for address in connects if isinstance(address, tuple)}
    assert ports <= {int(emulator.url.rsplit(":", 1)[1]), int(judge.url.rsplit(":", 1)[1])}


def test_without_a_judge_the_run_says_how_to_enable_one(emulator, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    env = emulated_gpu_env(emulator)
    result = run_cli(*ollama_flags(emulator), *matrix("llama3.2:3b", "bm25", 1), "--results-dir", tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    # the demo's settings pin `judge: none`, so a key alone would change nothing: the hint names the flag
    assert (
        "LLM-judged metrics (RAGAS) skipped — judging is off (judge: none); pass --judge gpt-4o-mini with OPENAI_API_KEY set"
        in result.stdout
    )
    assert not (latest(tmp_path) / "judge_errors.csv").exists()


def test_classify_maps_errors_to_causes():

    class RateLimitError(Exception):
        status_code = 429

    class InstructorRetryException(Exception):
        pass

    assert classify(TimeoutError()) == "timeout"
    assert classify(RateLimitError()) == "rate_limit"
    wrapped = InstructorRetryException("gave up")
    wrapped.__cause__ = RateLimitError()
    assert classify(wrapped) == "rate_limit"  # the HTTP cause wins over the wrapper
    assert classify(InstructorRetryException("bad json")) == "parse_error"
    assert classify(ValueError("?")) == "undefined"


def test_a_local_ollama_judge_is_loaded_once_after_generation_and_unloaded(emulator, tmp_path):
    env = {k: v for k, v in emulated_gpu_env(emulator).items() if k != "OPENAI_API_KEY"}
    args = [
        *ollama_flags(emulator),
        *matrix("llama3.2:3b", "nomic-embed-text", 2),
        "--results-dir",
        tmp_path,
        "--quiet",
        "--judge",
        "ollama_chat/qwen2.5:7b",
    ]
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert emulator.state.loads["qwen2.5:7b"] == 1  # LiteLLM's calls send the preload's num_ctx: no reload
    assert emulator.state.oom_errors == 0 and emulator.state.peak_device_used <= 10 * 10**9
    run_dir = latest(tmp_path)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    judge_events = [
        (e["event"], e["model"])
        for e in events
        if e["stage"] == "judge" and e["event"] in {"model_load", "model_unload", "unload_verified"}
    ]
    assert [event for event in judge_events if event[1] == "qwen2.5:7b"] == [
        ("model_load", "qwen2.5:7b"),
        ("model_unload", "qwen2.5:7b"),
        ("unload_verified", "qwen2.5:7b"),
    ]
    # answer_relevancy's embedding calls bring the embedding model in beside the judge; the clean-up takes it out
    assert ("model_unload", "nomic-embed-text:latest") in judge_events
    assert emulator.state.runners == {} or all(r.stopping_since is not None for r in emulator.state.runners.values())
    last_generation = max(i for i, e in enumerate(events) if e["stage"] == "generate")
    assert all(i > last_generation for i, e in enumerate(events) if e["stage"] == "judge")
    samples = rows(run_dir / "samples.csv")
    assert all(0.0 <= float(s[m]) <= 1.0 for s in samples for m in METRICS)


def test_halving_the_judge_cap_really_lowers_calls_in_flight():
    """What memory pressure does to the judge: the cap drops to half for the rest of the stage."""
    import asyncio

    from ragsweep.judge_client import JudgeClient, JudgeSpec

    client = JudgeClient(JudgeSpec("openai/x", "openai/e", None, concurrency=4, timeout_s=1.0, retries=0, parse_retries=0, max_tokens=2048))

    in_flight, peaks = [0], []

    async def call():  # what the server would see: calls open at once
        in_flight[0] += 1
        peaks[-1] = max(peaks[-1], in_flight[0])
        await asyncio.sleep(0.01)
        in_flight[0] -= 1

    async def main():
        peaks.append(0)
        await asyncio.gather(*(client._bounded(call) for _ in range(12)))
        assert await client.halve() == 2
        peaks.append(0)
        await asyncio.gather(*(client._bounded(call) for _ in range(12)))
        return tuple(peaks)

    assert asyncio.run(main()) == (4, 2)


def test_workers_never_fight_over_the_last_cell_while_memory_pressure_halves_the_cap(tmp_path, monkeypatch):
    """A worker that waits for the halving must not find the queue emptied under it (QueueEmpty skipped closing the run)."""
    import asyncio
    import types

    from ragsweep import judge as judge_stage
    from ragsweep.config import load_settings
    from ragsweep.judge_client import JudgeClient, JudgeSpec
    from ragsweep.platform import PlatformConfig
    from ragsweep.run import RunContext
    from ragsweep.runlog import RunLog
    from ragsweep.store import Store

    platform = PlatformConfig(
        "cuda", "emulated", 12 * 10**9, 64, 4, pressure_threshold_bytes=10**9, baseline_target_bytes=10**9, unload_timeout_s=5
    )
    store = Store(tmp_path / "db.sqlite")
    ctx = RunContext(
        "r1", tmp_path, load_settings(None, {}, environ={}), platform, None, store, RunLog("r1", tmp_path, store, platform), quiet=True
    )
    readings = iter([0] * 4)  # the first four cells start in calm; then the card fills up
    monkeypatch.setattr(judge_stage, "device_used_bytes", lambda: next(readings, 11 * 10**9))
    spec = JudgeSpec("openai/x", "openai/e", None, concurrency=4, timeout_s=5, retries=0, parse_retries=0, max_tokens=2048)
    client = JudgeClient(spec)

    class Metric:  # stands in for a RAGAS metric: one judge call through the client's real gate
        async def ascore(self, **inputs):
            await client._bounded(asyncio.sleep, 0.02)
            return types.SimpleNamespace(value=1.0)

    client.metrics = lambda: {"faithfulness": Metric()}
    cells = {f"k{i}": [judge_stage.Cell("bm25", "llm", f"q{i}", "faithfulness", 0, {}, f"k{i}")] for i in range(5)}
    cells_now = lambda: [cell for twins in cells.values() for cell in twins]  # noqa: E731
    judge_stage.Judging(ctx, spec, client=client, source=cells_now).start(answers_done=True).finish()
    assert len(store.judgements("r1")) == 5 and client.capacity == 2
    assert [e["new_judge_concurrency"] for e in store.events("r1") if e["event"] == "memory_pressure"] == [2]


def test_a_judge_server_that_is_not_there_stops_the_run_before_any_model_loads(tmp_path):
    """Before, the night's answers were made and then every judge cell failed after its retries (exit 1 in the morning)."""
    with JudgeServer() as gone:
        flags = judge_flags(gone)
    with OllamaEmulator() as emu:
        args = [*ollama_flags(emu), *matrix("llama3.2:3b", "nomic-embed-text", 2), "--results-dir", str(tmp_path), *flags]
        result = run_cli(*args, env=emulated_gpu_env(emu))
        assert sum(emu.state.work.values()) == 0  # no model loaded, no answer made
    assert result.returncode == 3 and result.stderr.count("\n") == 1, result.stderr
    assert f"the judge's server at {gone.url}/v1 is not reachable (ConnectError) — start it, or fix judge_base_url" in result.stderr


@pytest.mark.parametrize(
    "url, message",
    [("ftp://judge/v1", "not an http:// or https:// URL (scheme 'ftp')"), ("127.0.0.1:8000/v1", "needs its scheme, e.g. http://")],
)
def test_a_judge_url_litellm_could_not_call_is_a_config_error(url, message):
    from ragsweep.config import load_settings
    from ragsweep.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^--judge-base-url: {re.escape(message)}"):
        load_settings(None, {"judge_base_url": url}, environ={})


def test_a_judge_at_a_url_judges_while_the_llms_answer(tmp_path):
    """A judge whose memory ragsweep does not manage starts on each answer as it is stored, not after the last one."""
    with OllamaEmulator(call_s=0.15) as emu, JudgeServer() as judge:
        result = run(emu, judge, tmp_path, "--limit", "12")
        assert result.returncode == 0, result.stderr
        first_call = judge.state.first_chat_t
    events = [json.loads(line) for line in (latest(tmp_path) / "events.jsonl").read_text().splitlines()]
    last_answer = max(e["t"] for e in events if e["stage"] == "generate" and e["event"] == "stage_end")
    assert first_call < last_answer  # judged during generation
    (start,) = [e for e in events if e["stage"] == "judge" and e["event"] == "stage_start"]
    assert start["overlapped"] is True
    assert "- judge: ran beside generation for " in (latest(tmp_path) / "report.md").read_text()
    assert "<p>judge: ran beside generation for " in (latest(tmp_path) / "report.html").read_text()
    from ragsweep.findings import load_report
    from ragsweep.html_report import stage_spans
    from ragsweep.store import Store

    generation, judging = stage_spans(load_report(Store(tmp_path / "ragsweep.sqlite", create=False), latest(tmp_path).name), 0.0)
    assert (generation[2], judging[2]) == ("generation", "judge calls") and judging[0] < generation[1]  # the timeline's overlap
    samples = rows(latest(tmp_path) / "samples.csv")
    assert len(samples) == 24 and all(s[m] for s in samples for m in METRICS)  # every cell judged, none lost to the overlap


def test_a_rate_limiting_provider_lowers_the_judges_calls_in_flight(tmp_path):
    with OllamaEmulator() as emu, JudgeServer(JudgeFaults(latency_s=0.03, max_concurrent=3, retry_after_s=0.05)) as judge:
        result = run(emu, judge, tmp_path, "--judge-concurrency", "16")
        assert result.returncode == 0, result.stderr
        refused = judge.state.statuses[429]
    events = [json.loads(line) for line in (latest(tmp_path) / "events.jsonl").read_text().splitlines()]
    cuts = [e for e in events if e["event"] == "judge_concurrency"]
    assert refused > 0 and cuts and all(e["cause"] == "rate_limit" and e["new_concurrency"] < e["concurrency"] for e in cuts)
    assert min(e["new_concurrency"] for e in cuts) <= 4  # down towards what the provider allows
    assert all(s[m] for s in rows(latest(tmp_path) / "samples.csv") for m in METRICS)  # the refusals were retried, not failed


def test_a_judge_url_with_credentials_judges_every_cell(tmp_path):
    """LiteLLM's async transport refuses credentials in the URL: they must travel as a Basic header, and never be shown."""
    with OllamaEmulator() as emu, JudgeServer(JudgeFaults(basic_auth="judge:Pa55@w0rd-9Zq")) as judge:
        url = judge.url.replace("http://", "http://judge:Pa55@w0rd-9Zq@") + "/v1"
        result = run(emu, judge, tmp_path, "--judge-base-url", url)
        assert result.returncode == 0, result.stderr
        assert judge.state.statuses[401] == 0 and judge.state.chat_requests > 0
    samples = rows(latest(tmp_path) / "samples.csv")
    assert samples and all(s[m] for s in samples for m in METRICS)
    leaked = [p.name for p in tmp_path.rglob("*") if p.is_file() and b"w0rd-9Zq" in p.read_bytes()]  # long enough never to occur by chance
    assert not leaked and "w0rd-9Zq" not in result.stdout + result.stderr


def test_an_ollama_judge_on_a_host_with_credentials_judges_every_cell(emulator, tmp_path):
    host = emulator.url.replace("http://", "http://ops:S3cret@")
    env = {k: v for k, v in emulated_gpu_env(emulator).items() if k != "OPENAI_API_KEY"}
    args = [*matrix("llama3.2:3b", "nomic-embed-text", 2), "--backend", "ollama", "--ollama-host", host, "--results-dir", tmp_path]
    result = run_cli(*args, "--quiet", "--judge", "ollama_chat/qwen2.5:7b", env=env)
    assert result.returncode == 0, result.stderr
    assert all(s[m] for s in rows(latest(tmp_path) / "samples.csv") for m in METRICS)
    assert emulator.state.authorizations["Basic b3BzOlMzY3JldA=="] > 0  # ops:S3cret, as a header


def test_a_response_models_schema_is_built_once_and_each_caller_gets_its_own_copy():
    from pydantic import BaseModel

    from ragsweep.judge_client import schemas_built_once

    class Verdict(BaseModel):
        statement: str
        verdict: int

    expected = Verdict.model_json_schema()
    schemas_built_once()
    first = Verdict.model_json_schema()
    first["properties"]["verdict"]["type"] = "edited by a caller"
    assert Verdict.model_json_schema() == expected and Verdict.model_json_schema(mode="serialization") == expected

    class Other(BaseModel):
        answer: str

    assert Other.model_json_schema()["properties"] == {"answer": {"title": "Answer", "type": "string"}}  # per class, not shared
