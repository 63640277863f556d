"""The backend registry: one file and one line add a backend to the CLI, the config and the run."""

import csv

import pytest

import benchmark
from cli import latest_run_dir
from echo_backend import EchoBackend
from ragsweep import backends
from ragsweep.config import load_settings
from ragsweep.errors import ConfigError


@pytest.fixture
def echo_registered(monkeypatch):
    made = []

    class Recorded(EchoBackend):
        @classmethod
        def from_settings(cls, settings, device):
            made.append(super().from_settings(settings, device))
            return made[-1]

    monkeypatch.setitem(backends.BACKENDS, "echo", Recorded)  # the one registry line
    return made


def test_a_registered_backend_runs_a_whole_sweep_from_the_command_line(echo_registered, tiny_corpus, tiny_testset, tmp_path):
    code = benchmark.main(
        [
            "--backend",
            "echo",
            "--llms",
            "echo-llm",
            "--embeddings",
            "echo-embed,bm25",
            "--corpus",
            str(tiny_corpus),
            "--testset",
            str(tiny_testset),
            "--results-dir",
            str(tmp_path),
            "--judge",
            "none",
            "--quiet",
        ]
    )
    assert code == 0
    [backend] = echo_registered
    assert backend.loads == ["echo-embed", "echo-llm"] and backend.resident == set()  # E + L, all unloaded
    samples = list(csv.DictReader((latest_run_dir(tmp_path) / "samples.csv").open()))
    assert len(samples) == 4 and {s["answer"] for s in samples} == {"Paris", "Cats"}


def test_the_registry_feeds_the_config_and_the_cli_choices(echo_registered):
    assert load_settings(None, {"backend": "echo"}, environ={}).backend == "echo"
    assert "echo" in benchmark.cli.build_parser()._option_string_actions["--backend"].choices
    with pytest.raises(ConfigError, match=r"--backend: unknown backend 'nope' \(known: local, ollama, server, echo\)"):
        load_settings(None, {"backend": "nope"}, environ={})
