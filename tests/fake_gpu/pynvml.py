"""A stand-in for nvidia-ml-py's `pynvml`, for tests only: there is no GPU on this machine.

It exposes the calls ragsweep makes, with the real shapes (v1 memory struct .total/.free/.used,
compute processes with .pid/.usedGpuMemory, NVMLError subclasses). Its cards come from one of:
- RAGSWEEP_TEST_GPU_URL: one card, the emulated device of tests/ollama_emulator.py (live);
- RAGSWEEP_TEST_GPU_FILE: a JSON list of cards, each {"name", "uuid", "total", "used", "free",
  "processes": [{"pid", "used", "name"}]} (a multi-GPU box, a container's foreign or missing pids).
A test puts this folder first on PYTHONPATH; with neither variable it behaves like a machine with
no NVIDIA driver.
"""

import json
import os
import urllib.request
from types import SimpleNamespace


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def _cards() -> list[dict]:
    path, url = os.environ.get("RAGSWEEP_TEST_GPU_FILE"), os.environ.get("RAGSWEEP_TEST_GPU_URL")
    if path:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    if not url:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    with urllib.request.urlopen(f"{url}/_emulator/device", timeout=5) as response:
        return [dict(json.loads(response.read()), uuid="GPU-emulated-0")]


def nvmlInit():
    _cards()


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return len(_cards())


def nvmlDeviceGetHandleByIndex(index):
    if index >= len(_cards()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetHandleByUUID(uuid):
    for index, card in enumerate(_cards()):
        if card["uuid"] == uuid:
            return index
    raise NVMLError("Not Found")


def nvmlDeviceGetUUID(handle):
    return _cards()[handle]["uuid"]


def nvmlDeviceGetName(handle):
    return _cards()[handle]["name"]


def nvmlDeviceGetMemoryInfo(handle, version=None):
    card = _cards()[handle]
    return SimpleNamespace(total=card["total"], used=card["used"], free=card["free"])


def nvmlDeviceGetComputeRunningProcesses(handle):
    return [
        SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used"], gpuInstanceId=0, computeInstanceId=0) for p in _cards()[handle]["processes"]
    ]


def nvmlSystemGetProcessName(pid):
    for card in _cards():
        for process in card["processes"]:
            if process["pid"] == pid:
                return process["name"]
    raise NVMLError("Not Found")
