"""`pip install -e .` gives a `ragsweep` command that is `python src/benchmark.py`."""

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import benchmark
from cli import run_cli


def test_the_console_script_is_the_entry_main():
    [script] = entry_points(group="console_scripts", name="ragsweep")
    assert script.load() is benchmark.main


def test_the_ragsweep_command_plans_like_the_entry(tmp_path):
    args = [
        "--dry-run",
        "--backend",
        "local",
        "--llms",
        "smollm2-135m",
        "--embeddings",
        "bm25",
        "--limit",
        "2",
        "--results-dir",
        str(tmp_path),
    ]
    script = Path(sys.executable).with_name("ragsweep")  # installed beside this interpreter, whether or not the venv is on PATH
    installed = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120, check=False)
    entry = run_cli(*args, timeout=120)
    assert installed.returncode == entry.returncode == 0, installed.stderr + entry.stderr
    assert installed.stdout == entry.stdout and "model loads: 2 (E + L)" in installed.stdout
