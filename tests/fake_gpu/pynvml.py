"""A stand-in for nvidia-ml-py's `pynvml`, for tests only: there is no GPU on this machine.

It exposes the calls ragsweep makes, with the real shapes (v1 memory struct .total/.free/.used,
compute processes with .pid/.usedGpuMemory, NVMLError subclasses), and reads the emulated
device of tests/ollama_emulator.py from RAGSWEEP_TEST_GPU_URL. A test puts this folder first on
PYTHONPATH; without the variable it behaves like a machine with no NVIDIA driver.
"""

import json
import os
import urllib.request
from types import SimpleNamespace


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def _device() -> dict:
    url = os.environ.get("RAGSWEEP_TEST_GPU_URL")
    if not url:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    with urllib.request.urlopen(f"{url}/_emulator/device", timeout=5) as response:
        return json.loads(response.read())


def nvmlInit():
    _device()


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return 1


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetName(handle):
    return _device()["name"]


def nvmlDeviceGetMemoryInfo(handle, version=None):
    device = _device()
    return SimpleNamespace(total=device["total"], used=device["used"], free=device["free"])


def nvmlDeviceGetComputeRunningProcesses(handle):
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used"], gpuInstanceId=0, computeInstanceId=0) for p in _device()["processes"]]


def nvmlSystemGetProcessName(pid):
    for process in _device()["processes"]:
        if process["pid"] == pid:
            return process["name"]
    raise NVMLError("Not Found")
