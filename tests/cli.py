"""The user's command as a subprocess, as tests and bench scripts run it (one helper, not seven)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "src" / "benchmark.py"


def emulated_gpu_env(emulator, **extra: str) -> dict[str, str]:
    """The environment of a run whose NVML reads the emulator's card (tests/fake_gpu/pynvml.py)."""
    return dict(os.environ, PYTHONPATH=str(REPO / "tests" / "fake_gpu"), RAGSWEEP_TEST_GPU_URL=emulator.url, **extra)


def ollama_flags(emulator) -> list[str]:
    return ["--backend", "ollama", "--ollama-host", emulator.url]


def matrix(llms: str, embeddings: str, limit: int | str) -> list[str]:
    """--llms, --embeddings and --limit: the sweep a test runs."""
    return ["--llms", llms, "--embeddings", embeddings, "--limit", str(limit)]


def command(*args: str) -> list[str]:
    return [sys.executable, str(BENCHMARK), *map(str, args)]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python src/benchmark.py ARGS`, to the end; stdout and stderr captured as text."""
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout, env=env, check=False)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The same, started in the background (to signal or kill it). Ctrl-C works in it even when the suite itself was started
    as a background job, which inherits SIGINT ignored (and Python then never raises KeyboardInterrupt)."""
    return subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def latest_run_dir(results: Path) -> Path:
    """The newest run folder (run ids sort by time; a judge check's folder is not a run)."""
    return max(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("judge-check-"))
