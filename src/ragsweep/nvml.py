"""NVIDIA's management library, opened once: the device's memory as the driver sees it, for every process.

Absent (None) where there is no package, no driver or no device: callers record a missing
source, never zeros.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType


@cache
def library() -> ModuleType | None:
    """pynvml, initialised; None where NVML cannot answer. Initialised once per process."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlDeviceGetHandleByIndex(0)
        return pynvml
    except Exception:  # no package, no driver, no device
        return None


def first_device():
    """(pynvml, handle of device 0), or (None, None)."""
    nvml = library()
    return (nvml, nvml.nvmlDeviceGetHandleByIndex(0)) if nvml else (None, None)


def device_used_bytes() -> int | None:
    """Device memory in use now, or None where there is no NVIDIA device."""
    nvml, handle = first_device()
    if nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # the driver went away mid-run: the source is absent from now on
        return None
