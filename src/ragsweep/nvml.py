"""NVIDIA's management library, opened once: every visible card's memory as the driver sees it, for every process.

Visible means what CUDA_VISIBLE_DEVICES allows (indexes, GPU-/MIG- UUIDs, or unset for all), so
ragsweep watches the cards its models can land on. Absent (an empty list) where there is no
package, no driver or no device: callers record a missing source, never zeros.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from types import ModuleType


@dataclass(frozen=True)
class DeviceReading:
    """One card, now."""

    index: int  # NVML's index (not the CUDA ordinal under CUDA_VISIBLE_DEVICES)
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    processes: tuple[tuple[int, int], ...]  # (pid, bytes) per compute process NVML lists; pids may be the host's in a container


@cache
def library() -> ModuleType | None:
    """pynvml, initialised; None where NVML cannot answer. Initialised once per process."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no package, no driver, no device
        return None


@cache
def visible_handles() -> tuple[tuple[int, object], ...]:
    """(NVML index, handle) of every card CUDA_VISIBLE_DEVICES lets this machine's processes use."""
    nvml = library()
    if nvml is None:
        return ()
    try:
        every = [(index, nvml.nvmlDeviceGetHandleByIndex(index)) for index in range(nvml.nvmlDeviceGetCount())]
    except Exception:
        return ()
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        return tuple(every)
    chosen = []
    for entry in (part.strip() for part in wanted.split(",")):
        if entry.isdigit() and int(entry) < len(every):
            chosen.append(every[int(entry)])
        elif entry:
            chosen += [(index, handle) for index, handle in every if _uuid(nvml, handle).startswith(entry)]
        if not entry or (entry.isdigit() and int(entry) >= len(every)):
            break  # CUDA stops at the first entry it cannot use
    return tuple(chosen)


def read_devices() -> list[DeviceReading]:
    """Every visible card's memory and compute processes, now; [] where NVML is absent or fails."""
    nvml = library()
    readings = []
    for index, handle in visible_handles():
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            processes = tuple((p.pid, p.usedGpuMemory or 0) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            name = nvml.nvmlDeviceGetName(handle)
        except Exception:  # the driver went away mid-run: this source is absent from now on
            return []
        name = name.decode() if isinstance(name, bytes) else name
        readings.append(DeviceReading(index, name, int(memory.total), int(memory.used), int(memory.free), processes))
    return readings


def device_used_bytes() -> int | None:
    """Memory in use on the fullest visible card (an out-of-memory error happens on one card, not on the sum); None without NVML."""
    readings = read_devices()
    return max(r.used_bytes for r in readings) if readings else None


def _uuid(nvml: ModuleType, handle) -> str:
    try:
        uuid = nvml.nvmlDeviceGetUUID(handle)
        return uuid.decode() if isinstance(uuid, bytes) else uuid
    except Exception:
        return ""
