"""bench/gpu_check.py ships with the project; its --cpu mode runs here: the logic with tiny models, real out-of-memory errors."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_check_in_cpu_mode_passes_every_check(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))  # tests/oom_guard.py raises torch.OutOfMemoryError on the CPU
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu", "--json", str(tmp_path / "check.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "check.json").read_text())["results"]
    assert set(results) == {"cycles tiny", "out of memory at load", "out of memory mid-embed"}
    assert all(c["back"] for c in results["cycles tiny"]["cycles"]) and len(results["cycles tiny"]["cycles"]) == 3
    assert results["out of memory at load"]["steps"] == ["as configured"] and results["out of memory at load"]["recovered_by"] == [
        "after clean-up"
    ]
    assert results["out of memory mid-embed"]["halvings"] == ["batch 64 → 32", "batch 32 → 16", "batch 16 → 8"]
    assert "PASS" in result.stdout and "FAIL" not in result.stdout
