"""The emulator itself must be faithful to ../shared/reference/ollama-api-facts.md."""

import time

import httpx
import pytest

from ollama_emulator import FOREVER, HTTPError, OllamaEmulator, parse_keep_alive


@pytest.fixture
def client():
    with OllamaEmulator(linger_s=0.3, vram_lag_s=0.3) as emu, httpx.Client(base_url=emu.url, timeout=30) as http:
        http.emu = emu
        yield http


def test_keep_alive_forms():
    assert parse_keep_alive(300) == 300 and parse_keep_alive(0.5) == 0.5 and parse_keep_alive(-1) == FOREVER
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("0") == 0 and parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive(None) is None
    for bad, message in (
        ("-1", 'time: missing unit in duration "-1"'),
        ("300", 'time: missing unit in duration "300"'),
        (True, "Unsupported type: 'bool'"),
    ):
        with pytest.raises(HTTPError) as caught:
            parse_keep_alive(bad)
        assert caught.value.status == 400 and caught.value.message == message


def test_not_found_wordings_differ_per_endpoint(client):
    assert client.post("/api/chat", json={"model": "nope"}).json() == {"error": "model 'nope' not found"}
    reply = client.post("/api/embed", json={"model": "nope", "input": "x"})
    assert reply.status_code == 404 and reply.json() == {"error": 'model "nope" not found, try pulling it first'}
    assert client.get("/api/show").status_code == 405 and client.get("/nope").status_code == 404


def test_unload_answers_at_once_then_lingers_then_frees_vram(client):
    assert client.post("/api/embed", json={"model": "bge-m3", "input": []}).json() == {"model": "bge-m3", "embeddings": []}  # loads
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["bge-m3:latest"]
    reply = client.post("/api/generate", json={"model": "bge-m3", "keep_alive": 0}).json()
    assert reply["done_reason"] == "unload" and reply["response"] == ""  # works for an embedding model
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["bge-m3:latest"]  # "Stopping..."
    time.sleep(0.45)
    assert client.get("/api/ps").json()["models"] == [] and client.emu.device_used() > 0  # VRAM lags
    time.sleep(0.4)
    assert client.emu.device_used() == 0


def test_generate_and_chat_refuse_embedding_models_except_to_unload(client):
    reply = client.post("/api/chat", json={"model": "all-minilm", "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 400 and reply.json() == {"error": '"all-minilm" does not support chat'}
    reply = client.post("/api/chat", json={"model": "all-minilm", "messages": [], "keep_alive": 0})
    assert reply.json()["done_reason"] == "unload" and reply.json()["message"] == {"role": "assistant", "content": ""}


def test_changed_num_ctx_reloads_and_ps_reports_sizes(client):
    body = {"model": "llama3.2:3b", "messages": [], "stream": False}
    assert client.post("/api/chat", json={**body, "options": {"num_ctx": 4096}}).json()["done_reason"] == "load"
    client.post("/api/chat", json={**body, "options": {"num_ctx": 8192}})
    assert client.emu.state.loads["llama3.2:3b"] == 2
    row = client.get("/api/ps").json()["models"][0]
    assert row["size"] == row["size_vram"] > 3 * 10**9 and row["context_length"] == 8192 and len(row["digest"]) == 64


def test_embeddings_are_normalised_and_count_tokens(client):
    reply = client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a cat sat", "dogs"]}).json()
    assert len(reply["embeddings"]) == 2 and len(reply["embeddings"][0]) == 768
    assert abs(sum(v * v for v in reply["embeddings"][0]) - 1.0) < 1e-6 and reply["prompt_eval_count"] == 4
    assert client.post("/api/embed", json={"model": "nomic-embed-text", "input": 5}).json() == {"error": "invalid input type"}


def test_bad_option_type_is_a_500(client):
    reply = client.post(
        "/api/chat", json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": "x"}}
    )
    assert reply.status_code == 500 and reply.json() == {"error": 'option "num_ctx" must be of type integer'}
