"""--backend server against a real OpenAI-compatible server: llama-cpp-python's own (`python -m llama_cpp.server`) over the
shipped GGUF models, launched per model by ragsweep or attached at a URL."""

import csv
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cli import latest_run_dir, run_cli, start_cli
from ragsweep.backends.local import model_path

LAUNCH = f"{sys.executable} -m llama_cpp.server --model {{model}} --host {{host}} --port {{port}} --n_ctx 2048"
SECRET = "srv-key-" + "Q7" * 12


def servers(tmp_path: Path) -> list[psutil.Process]:
    """The llama_cpp.server processes of this test: their model lies in its tmp_path (see `own`), so a test running beside
    it on another worker does not count."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "llama_cpp.server" in cmdline and any(str(tmp_path) in part for part in cmdline):
            found.append(process)
    return found


def own(tmp_path: Path, name: str = "smollm2-135m") -> str:
    """The shipped GGUF, linked into this test's folder: the path names this test's servers."""
    link = tmp_path / "models" / f"{name}.gguf"
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(model_path(name))
    return str(link)


def launched(tmp_path: Path, *extra: str) -> list[str]:
    return ["--backend", "server", "--server-command", LAUNCH, "--embeddings", "bm25", "--results-dir", str(tmp_path / "r"), *extra]


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def answered(tmp_path: Path) -> int:
    try:
        with sqlite3.connect(tmp_path / "r" / "ragsweep.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM answers WHERE error IS NULL").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_for(condition, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_llms_get_a_server_each_one_at_a_time_and_no_process_is_left(tmp_path):
    smollm2 = own(tmp_path)
    gemma = own(tmp_path, "gemma3-270m")
    result = run_cli(*launched(tmp_path, "--llms", f"{smollm2},{gemma}", "--limit", "2", "--generation-concurrency", "2"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "4/4 samples answered" in result.stdout
    run_dir = latest_run_dir(tmp_path / "r")
    story = [(e["event"], e["model"]) for e in events(run_dir) if e["event"] in ("model_load", "model_unload") and e["model"] != "bm25"]
    assert story == [("model_load", smollm2), ("model_unload", smollm2), ("model_load", gemma), ("model_unload", gemma)]
    rows = (run_dir / "samples.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and not servers(tmp_path)
    said = [line for line in (run_dir / "models.log").read_text().splitlines() if line.startswith("[server ")]  # their own output
    lifetimes = [line.split("INFO:")[1].strip() for line in said if "server process [" in line]
    assert [line.split(" [")[0] for line in lifetimes] == ["Started server process", "Finished server process"] * 2
    assert lifetimes[0].split("[")[1] == lifetimes[1].split("[")[1] != lifetimes[2].split("[")[1]  # the first ended before the second began


@pytest.mark.parametrize(
    ("command", "code", "said"),
    [
        (
            f"{sys.executable} -c \"print('bind: address already in use'); raise SystemExit(1)\" {{model}} {{port}}",
            3,
            "address already in use",
        ),
        ("no-such-server-program --model {model} --port {port}", 2, "'no-such-server-program' is not a program on PATH"),
        (f"{sys.executable} -m llama_cpp.server --model {{model}}", 2, "--server-command must hold {port}"),
    ],
)
def test_a_server_that_cannot_start_is_one_line(tmp_path, command, code, said):
    smollm2 = own(tmp_path)
    result = run_cli("--backend", "server", "--server-command", command, "--llms", smollm2, "--embeddings", "bm25", "--limit", "1",
                     "--results-dir", str(tmp_path / "r"), "--quiet")  # fmt: skip
    assert result.returncode == code, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if said in line]
    assert lines, result.stdout + result.stderr
    assert not servers(tmp_path)


def test_a_missing_model_file_is_exit_2_before_anything_starts(tmp_path):
    result = run_cli(*launched(tmp_path, "--llms", str(tmp_path / "absent.gguf"), "--limit", "1"))
    assert result.returncode == 2 and "absent.gguf' is not a file or folder here" in result.stderr


def test_a_server_killed_mid_stage_is_restarted_and_nothing_finished_is_redone(tmp_path):
    smollm2 = own(tmp_path)
    run = start_cli(*launched(tmp_path, "--llms", smollm2, "--limit", "8", "--generation-concurrency", "1"))
    wait_for(lambda: answered(tmp_path) >= 2)
    (first,) = servers(tmp_path)
    first.kill()
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, out[-2000:] + err
    run_dir = latest_run_dir(tmp_path / "r")
    kinds = [(e["event"], e.get("cause")) for e in events(run_dir) if e["model"] == smollm2]
    assert ("recovering", "runner_crash") in kinds and [k for k, _ in kinds].count("model_load") == 2
    assert "8/8 samples answered" in out and not servers(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_during_a_stage_leaves_no_server(tmp_path, sig):
    smollm2 = own(tmp_path)
    run = start_cli(*launched(tmp_path, "--llms", smollm2, "--limit", "20", "--generation-concurrency", "1"))
    wait_for(lambda: answered(tmp_path) >= 1)
    assert servers(tmp_path)
    run.send_signal(sig)
    run.communicate(timeout=120)
    assert run.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
    wait_for(lambda: not servers(tmp_path), timeout_s=20)  # kill -9 of ragsweep itself: the server dies with it (PR_SET_PDEATHSIG)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_attached_server_is_used_left_running_and_never_sees_its_key_written(tmp_path):
    smollm2 = own(tmp_path)
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", smollm2, "--port", str(port), "--api_key", SECRET, "--n_ctx", "2048"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout_s=60)
        env = {**__import__("os").environ, "SERVER_API_KEY": SECRET}
        flags = ["--backend", "server", "--server-url", url, "--embeddings", "bm25", "--results-dir", str(tmp_path / "r")]
        unknown = run_cli(*flags, "--llms", "qwen2.5:7b", "--limit", "1", env=env)
        assert unknown.returncode == 2 and f"does not serve 'qwen2.5:7b' — it serves: {smollm2}" in unknown.stderr
        used = run_cli(*flags, "--llms", smollm2, "--limit", "3", env=env)
        assert used.returncode == 0, used.stdout[-2000:] + used.stderr
        assert "3/3 samples answered" in used.stdout and "its memory is the server's to manage" in used.stdout
        assert server.poll() is None  # attached: never stopped by ragsweep
        assert (
            f"Server-managed (an attached server: its memory is its own, never unloaded by ragsweep): {smollm2}"
            in (latest_run_dir(tmp_path / "r") / "report.md").read_text()
        )
        no_key = run_cli(*flags, "--llms", smollm2, "--limit", "1", env={k: v for k, v in env.items() if k != "SERVER_API_KEY"})
        assert no_key.returncode == 2 and "refused the API key" in no_key.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    for output in (used.stdout, used.stderr, unknown.stderr):
        assert SECRET not in output
    for path in (tmp_path / "r").rglob("*"):
        if path.is_file():
            assert SECRET[-12:].encode() not in path.read_bytes(), path


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {SECRET}"}, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_launched_server_embeds_for_dense_retrieval(tmp_path, tiny_corpus, tiny_testset):
    embedder, llm = own(tmp_path, "smollm2-135m"), str(tmp_path / "models" / "answers.gguf")
    Path(llm).symlink_to(model_path("smollm2-135m"))
    command = LAUNCH + " --embedding true"  # llama-cpp-python serves /v1/embeddings only when asked
    args = ["--backend", "server", "--server-command", command, "--results-dir", str(tmp_path / "r"), "--corpus", str(tiny_corpus)]
    result = run_cli(*args, "--testset", str(tiny_testset), "--embeddings", embedder, "--llms", llm, "--generation-concurrency", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    rows = list(csv.DictReader((latest_run_dir(tmp_path / "r") / "samples.csv").open()))
    assert len(rows) == 2 and all(r["embedding_model"] == embedder and r["recall_at_k"] != "" and r["answer"] for r in rows)
    story = [(e["event"], e["model"]) for e in events(latest_run_dir(tmp_path / "r")) if e["event"] in ("model_load", "model_unload")]
    assert story == [("model_load", embedder), ("model_unload", embedder), ("model_load", llm), ("model_unload", llm)]
    assert not servers(tmp_path)


def test_a_server_with_four_slots_gets_four_requests_in_flight(tmp_path):
    """tests/openai_server.py, launched like vLLM: 4 slots that share a batch. The probe finds 4, as it does on Ollama."""
    command = f"{sys.executable} {Path(__file__).parent / 'openai_server.py'} --model {{model}} --port {{port}} --parallel 4 --call-s 0.25"
    result = run_cli("--backend", "server", "--server-command", command, "--llms", "emulated-7b", "--embeddings", "bm25,none",
                     "--limit", "30", "--results-dir", str(tmp_path / "r"))  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    (found,) = [e for e in events(latest_run_dir(tmp_path / "r")) if e["event"] == "throughput"]
    assert found["in_flight"] == 4 and found["probed"] and found["speedup"] > 1.8


def test_a_hub_id_is_a_name_for_the_server_to_fetch_and_a_path_must_exist(tmp_path):
    from ragsweep.backends.server import ServerBackend
    from ragsweep.errors import ModelNotFoundError

    backend = ServerBackend("vllm serve {model} --port {port}", None, 60, 60, None)
    hub = backend.describe("Qwen/Qwen2.5-7B-Instruct", "llm")
    assert hub.size_bytes is None and hub.digest != backend.describe("mistralai/Mistral-7B-Instruct-v0.3", "llm").digest
    local = backend.describe(own(tmp_path), "llm")
    assert local.size_bytes == model_path("smollm2-135m").stat().st_size
    for missing in (str(tmp_path / "absent.gguf"), "./absent", "~/absent-model"):
        with pytest.raises(ModelNotFoundError, match="is not a file or folder here"):
            backend.describe(missing, "llm")
