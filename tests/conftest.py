"""Shared fixtures. Offline switches are set before anything imports the model libraries."""

import json
import os

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_corpus_rows(n: int) -> list[dict]:
    """n small numbered passages (d0, d1, ...)."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return [{"id": f"d{i}", "title": f"Item {i}", "text": f"Item {i} is called {words[i % 10]} in the list."} for i in range(n)]


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "d1", "title": "Cats", "text": "Cats sleep most of the day and hunt mice at night."},
            {"id": "d2", "title": "Paris", "text": "Paris is the capital of France, on the river Seine."},
            {"id": "d3", "title": "Rust", "text": "Rust is a systems programming language focused on safety."},
        ],
    )


@pytest.fixture
def tiny_testset(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "testset.jsonl",
        [
            {"id": "q1", "question": "What is the capital of France?", "reference": "Paris", "reference_context_ids": ["d2"]},
            {"id": "q2", "question": "What do cats hunt at night?", "reference": "mice", "reference_context_ids": ["d1"]},
        ],
    )


@pytest.fixture
def emulator():
    from ollama_emulator import OllamaEmulator

    with OllamaEmulator() as emu:
        yield emu


def use_fake_nvml(monkeypatch, **environ: str) -> None:
    """This process's NVML is tests/fake_gpu/pynvml.py, reading the cards `environ` names (the subprocess tests use PYTHONPATH)."""
    import importlib.util
    import sys

    from ragsweep import nvml

    spec = importlib.util.spec_from_file_location("pynvml", REPO / "tests" / "fake_gpu" / "pynvml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    nvml.library.cache_clear()  # NVML is opened once per process: open the fake one
    nvml.visible_handles.cache_clear()


@pytest.fixture
def fake_gpu(emulator, monkeypatch):
    """This process's NVML reads the emulated card."""
    from ragsweep import nvml

    use_fake_nvml(monkeypatch, RAGSWEEP_TEST_GPU_URL=emulator.url)
    yield emulator
    nvml.library.cache_clear()
    nvml.visible_handles.cache_clear()
