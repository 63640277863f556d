"""Memory snapshots and the clean-state guarantee between model stages.

A snapshot gathers every source that exists and records the ones that do not as absent (None),
never as zero: torch.cuda in this process sees nothing of a model living in a runner process,
so the device (NVML) and the backend's own view (/api/ps, runner processes) are read too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import psutil

from . import nvml
from .errors import MemoryNotReleasedError
from .platform import PlatformConfig

if TYPE_CHECKING:
    from .backends.base import Backend

RUNNER_NAMES = ("ollama", "ollama_llama_server", "llama-server")


@dataclass
class MemorySnapshot:
    """One row of the memory ledger (memory.csv). Byte counts; None = source absent."""

    stage: str  # plan (the clean-up before the first stage) | retrieve | generate | judge
    label: str  # e.g. before_load, loaded, after_unload
    model: str | None
    t: float  # unix time
    platform: str  # cuda | mps | cpu
    rss_bytes: int  # this process's resident memory
    runner_rss_bytes: int | None  # resident memory of the backend's model processes
    system_total_bytes: int
    system_available_bytes: int
    device_total_bytes: int | None = None  # NVML, summed over the visible cards
    device_used_bytes: int | None = None
    device_free_bytes: int | None = None
    device_max_used_bytes: int | None = None  # the fullest card: what thresholds and targets are checked against
    devices: str = ""  # per card, ';'-joined "nvml_index:used_bytes/total_bytes"
    attribution: str | None = None  # per-process split: "nvml" (pids matched), "inferred" (growth since before_load), None (no NVML)
    gpu_runner_bytes: int | None = None  # NVML per-process use, attributed
    gpu_this_process_bytes: int | None = None
    gpu_other_bytes: int | None = None
    torch_allocated_bytes: int | None = None  # this process only, when it uses CUDA
    backend_loaded_bytes: int | None = None  # what the backend reports loaded (size)
    backend_loaded_vram_bytes: int | None = None  # ... and how much of it is on the GPU
    backend_models: str = ""  # ';'-joined names the backend reports loaded
    pressure_level: int | None = None  # macOS: 1 normal, 2 warn, 4 critical
    box: str = ""  # the machine (a cluster box's name); filled in when the row is stored

    def row(self) -> dict:
        return asdict(self)

    @property
    def in_use_bytes(self) -> int:
        return bytes_in_use(self.row())


def bytes_in_use(row: dict) -> int:
    """The figure compared with thresholds: the fullest card's use where NVML exists, else the model processes' RSS."""
    if row.get("device_max_used_bytes") is not None:
        return row["device_max_used_bytes"]
    if row.get("device_used_bytes") is not None:  # a ledger written before per-card figures
        return row["device_used_bytes"]
    return row.get("runner_rss_bytes") or 0


def monitor_gpu_memory(stage: str, label: str, backend: Backend, platform: PlatformConfig, model: str | None = None) -> MemorySnapshot:
    """Take one snapshot from every source available on this machine."""
    loaded = backend.loaded()
    pids = [info.pid for info in loaded if info.pid]
    system = psutil.virtual_memory()
    snapshot = MemorySnapshot(
        stage=stage,
        label=label,
        model=model,
        t=time.time(),
        platform=platform.device,
        rss_bytes=psutil.Process().memory_info().rss,
        runner_rss_bytes=_rss_of(pids) if backend.runs_locally else None,
        system_total_bytes=system.total,
        system_available_bytes=system.available,
        backend_loaded_bytes=sum(info.size_bytes or 0 for info in loaded),
        backend_loaded_vram_bytes=sum(info.size_vram_bytes or 0 for info in loaded),
        backend_models=";".join(info.name for info in loaded),
    )
    _add_nvml(snapshot, pids)
    _add_torch(snapshot)
    if sys.platform == "darwin":
        snapshot.pressure_level = _macos_pressure_level()
    return snapshot


class MemorySampler:
    """From a model's load until its unload is verified, a thread reads memory every `interval_s`: the peaks between the
    fixed snapshots, those of the load and the unload included.

    On an H200 the peak during embedding was twice the level right after the load. Samples are kept
    in memory and stored by the caller when the model leaves (SQLite stays single-threaded).
    """

    def __init__(self, backend: Backend, platform: PlatformConfig, stage: str, model: str, before: MemorySnapshot, interval_s: float):
        self._read = lambda: monitor_gpu_memory(stage, "sample", backend, platform, model)
        self._before, self._interval_s = before, interval_s
        self.samples: list[MemorySnapshot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ragsweep-sampler-{model}", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                sample = self._read()
            except Exception:  # a backend that stopped answering: the stage itself will say so
                continue
            infer_attribution(sample, self._before)
            self.samples.append(sample)


RETURN_TOLERANCE = 256 * 1024**2  # device memory may differ this much from its pre-load level and count as back


def ensure_clean_gpu_state(
    backend: Backend,
    platform: PlatformConfig,
    on_unload: Callable[[str], None] = lambda name: None,
    back_to_bytes: int | None = None,
    poll_s: float = 0.25,
) -> None:
    """Unload everything the backend holds, then wait until backend and device agree it is gone.

    Unloading is asynchronous (Ollama answers first, the runner exits later, and the driver's
    free-memory figure lags a few seconds more), so this polls with a deadline. "Gone" means the
    device is back near `back_to_bytes` (its level before the load) when given, else under the
    platform's baseline target.
    """
    for info in backend.loaded():
        if not info.stopping:  # one already leaving needs no second unload, only the wait below
            backend.unload(info.name)
            on_unload(info.name)
    limit = platform.baseline_target_bytes if back_to_bytes is None else back_to_bytes + RETURN_TOLERANCE
    deadline = time.monotonic() + platform.unload_timeout_s
    while True:
        still_loaded = [info.name for info in backend.loaded()]
        used = nvml.device_used_bytes()
        if not still_loaded and (used is None or used <= limit):
            return
        if time.monotonic() > deadline:
            raise MemoryNotReleasedError(_not_released_message(still_loaded, used, limit, platform))
        time.sleep(poll_s)


def _not_released_message(still_loaded: list[str], used: int | None, limit: int, platform: PlatformConfig) -> str:
    held = f"still loaded: {', '.join(still_loaded)}" if still_loaded else "no model listed as loaded"
    device = f"; device memory in use {used / 1e9:.2f} GB > {limit / 1e9:.2f} GB expected" if used is not None else ""
    hint = "check what else holds GPU memory (nvidia-smi, ollama ps)"
    return f"memory did not come back within {platform.unload_timeout_s:.0f} s after unloading ({held}{device}) — {hint}"


def _rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue  # exited between the listing and this read
    return total


def _add_nvml(snapshot: MemorySnapshot, runner_pids: list[int]) -> None:
    cards = nvml.read_devices()
    if not cards:
        return
    snapshot.device_total_bytes = sum(c.total_bytes for c in cards)
    snapshot.device_used_bytes = sum(c.used_bytes for c in cards)
    snapshot.device_free_bytes = sum(c.free_bytes for c in cards)
    snapshot.device_max_used_bytes = max(c.used_bytes for c in cards)
    snapshot.devices = ";".join(f"{c.index}:{c.used_bytes}/{c.total_bytes}" for c in cards)
    runner = this = other = 0
    pynvml = nvml.library()
    for pid, used in (process for card in cards for process in card.processes):  # usedGpuMemory None (WDDM) was read as 0
        if pid == os.getpid():
            this += used
        elif pid in runner_pids or _process_name(pynvml, pid) in RUNNER_NAMES:
            runner += used
        else:
            other += used
    snapshot.gpu_runner_bytes, snapshot.gpu_this_process_bytes, snapshot.gpu_other_bytes = runner, this, other
    snapshot.attribution = "nvml"


def infer_attribution(snapshot: MemorySnapshot, before: MemorySnapshot) -> None:
    """Containers: NVML may list no process, or host pids this container cannot see. When no listed pid is a model's
    but a model is loaded, the device's growth since `before` (the level before the load) is the model's: 'inferred'."""
    if snapshot.attribution != "nvml" or snapshot.gpu_runner_bytes or not snapshot.backend_models:
        return
    if snapshot.device_used_bytes is None or before.device_used_bytes is None:
        return
    snapshot.gpu_runner_bytes = max(0, snapshot.device_used_bytes - before.device_used_bytes)
    snapshot.gpu_other_bytes = max(0, (snapshot.gpu_other_bytes or 0) - snapshot.gpu_runner_bytes)
    snapshot.attribution = "inferred"


def _process_name(pynvml, pid: int) -> str:
    """NVML's own name first: in containers NVML reports host PIDs that psutil cannot see."""
    try:
        name = pynvml.nvmlSystemGetProcessName(pid)
        return os.path.basename(name.decode() if isinstance(name, bytes) else name)
    except Exception:
        try:
            return psutil.Process(pid).name()
        except psutil.Error:
            return ""


def _add_torch(snapshot: MemorySnapshot) -> None:
    torch = sys.modules.get("torch")  # never import torch just to read zeros
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        snapshot.torch_allocated_bytes = int(torch.cuda.memory_allocated())


def _macos_pressure_level() -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", "kern.memorystatus_vm_pressure_level"], capture_output=True, text=True, timeout=2)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
