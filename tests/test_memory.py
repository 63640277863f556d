"""Memory as NVML sees it on real boxes: several cards, CUDA_VISIBLE_DEVICES, containers without pids, a sampler."""

import json
import os
import time

import pytest

from conftest import use_fake_nvml
from ragsweep import nvml
from ragsweep.backends.base import Backend, LoadedInfo
from ragsweep.memory import MemorySampler, bytes_in_use, infer_attribution, monitor_gpu_memory
from ragsweep.platform import get_platform_config

GB = 10**9


def card(index: int, used: float, total: float = 24, processes=()) -> dict:
    return {
        "name": "NVIDIA L4",
        "uuid": f"GPU-{index:04d}-test",
        "total": int(total * GB),
        "used": int(used * GB),
        "free": int((total - used) * GB),
        "processes": [dict(p) for p in processes],
    }


@pytest.fixture
def cards(tmp_path, monkeypatch):
    """Write the box's cards; NVML (the fake) reads them on every call."""
    path = tmp_path / "cards.json"

    def box(*devices: dict, visible: str | None = None) -> None:
        path.write_text(json.dumps(list(devices)))
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        use_fake_nvml(monkeypatch, RAGSWEEP_TEST_GPU_FILE=str(path))

    yield box
    nvml.library.cache_clear()
    nvml.visible_handles.cache_clear()


class Runner(Backend):
    """A backend whose one model lives in process `pid` (what /api/ps or a child process would say)."""

    name, runs_locally = "runner", False

    def __init__(self, pid: int | None, models=("qwen2.5:7b",)):
        self.pid, self.models = pid, list(models)

    @classmethod
    def from_settings(cls, settings, device):
        return cls(None)

    def describe(self, name, kind):
        raise NotImplementedError

    def load(self, info, options=None):
        raise NotImplementedError

    def loaded(self):
        return [LoadedInfo(name, None, None, self.pid) for name in self.models]

    def unload(self, name):
        self.models.remove(name)


def test_every_visible_card_is_read_and_the_fullest_one_is_what_counts(cards):
    cards(card(0, 3), card(1, 20), card(2, 1))
    platform = get_platform_config()
    assert (platform.device, platform.device_count, platform.memory_total_bytes) == ("cuda", 3, 24 * GB)
    snapshot = monitor_gpu_memory("generate", "loaded", Runner(None), platform)
    assert snapshot.device_used_bytes == 24 * GB and snapshot.device_max_used_bytes == 20 * GB
    assert snapshot.devices == f"0:{3 * GB}/{24 * GB};1:{20 * GB}/{24 * GB};2:{1 * GB}/{24 * GB}"
    assert bytes_in_use(snapshot.row()) == 20 * GB  # one full card is out of memory, whatever the sum
    assert nvml.device_used_bytes() == 20 * GB


@pytest.mark.parametrize("visible, indexes", [("2,0", [2, 0]), ("GPU-0001", [1]), ("", []), ("1,7,2", [1])])
def test_cuda_visible_devices_by_index_or_uuid(cards, visible, indexes):
    cards(card(0, 1), card(1, 2), card(2, 3), visible=visible)
    assert [reading.index for reading in nvml.read_devices()] == indexes


def test_the_smallest_visible_card_sets_the_thresholds(cards):
    cards(card(0, 0, total=80), card(1, 0, total=12))
    platform = get_platform_config()
    assert platform.memory_total_bytes == 12 * GB and platform.pressure_threshold_bytes == 10 * GB


def test_pids_nvml_lists_are_attributed(cards):
    cards(
        card(
            0,
            9,
            processes=[
                {"pid": 4242, "used": int(6 * GB), "name": "ollama_llama_server"},
                {"pid": os.getpid(), "used": int(1 * GB), "name": "python"},
                {"pid": 7, "used": int(2 * GB), "name": "Xorg"},
            ],
        )
    )
    snapshot = monitor_gpu_memory("generate", "loaded", Runner(4242), get_platform_config())
    assert (snapshot.gpu_runner_bytes, snapshot.gpu_this_process_bytes, snapshot.gpu_other_bytes) == (6 * GB, 1 * GB, 2 * GB)
    assert snapshot.attribution == "nvml"


@pytest.mark.parametrize("processes", [[], [{"pid": 999999, "used": int(6 * GB), "name": ""}]], ids=["empty list", "foreign pids"])
def test_in_a_container_the_growth_since_before_load_is_inferred(cards, processes):
    cards(card(0, 0.5))
    before = monitor_gpu_memory("generate", "before_load", Runner(None, models=()), get_platform_config())
    cards(card(0, 6.5, processes=processes))  # the model loaded; NVML lists nothing of ours
    loaded = monitor_gpu_memory("generate", "loaded", Runner(321), get_platform_config())
    infer_attribution(loaded, before)
    assert loaded.attribution == "inferred" and loaded.gpu_runner_bytes == 6 * GB
    assert loaded.gpu_other_bytes == 0  # a foreign pid was the model, not another program


def test_the_sampler_reads_while_a_model_is_resident(cards):
    cards(card(0, 2))
    platform = get_platform_config()
    backend = Runner(None)
    before = monitor_gpu_memory("retrieve", "before_load", backend, platform)
    with MemorySampler(backend, platform, "retrieve", "qwen2.5:7b", before, interval_s=0.02) as sampler:
        time.sleep(0.15)
        cards(card(0, 11))  # the peak between two fixed snapshots
        time.sleep(0.1)
    count = len(sampler.samples)
    time.sleep(0.1)
    assert len(sampler.samples) == count >= 5  # and it stopped with the block
    assert {s.label for s in sampler.samples} == {"sample"} and max(s.device_max_used_bytes for s in sampler.samples) == 11 * GB
