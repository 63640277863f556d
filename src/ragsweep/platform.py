"""What machine this is and the memory budget that follows from it.

Detection avoids importing torch in the parent (seconds of start-up, and a CUDA context the
parent would then hold): NVML answers for NVIDIA, the OS answers for Apple Silicon.
"""

from __future__ import annotations

import platform as _platform
import sys
from dataclasses import asdict, dataclass

import psutil

from . import nvml

GB = 1024**3


@dataclass(frozen=True)
class PlatformConfig:
    device: str  # cuda | mps | cpu
    device_name: str
    memory_total_bytes: int  # GPU memory of one card (the smallest visible) on cuda; system memory on mps/cpu (unified)
    embed_batch_size: int  # texts per embedding request
    judge_concurrency: int  # judge calls in flight (the seed's parallel_metrics)
    pressure_threshold_bytes: int  # above this before a batch: clean up and halve the batch
    baseline_target_bytes: int  # device use expected between stages, all models unloaded
    unload_timeout_s: float  # how long to wait for memory to come back after an unload
    device_count: int = 1  # visible cards; thresholds and targets apply to each card

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """The memory one model may take where it runs: one card's budget (the pressure threshold), and the cards it may spread over."""

    card_bytes: int
    cards: int = 1
    splits: bool = False  # the backend spreads a model over several cards (Ollama); else it lands on one

    @classmethod
    def of(cls, platform: PlatformConfig, splits: bool) -> Budget:
        return cls(platform.pressure_threshold_bytes, platform.device_count, splits)

    @property
    def capacity_bytes(self) -> int:
        """The largest model that fits: what decides whether another box is bigger."""
        return self.card_bytes * (self.cards if self.splits else 1)


def detect_device() -> tuple[str, str, int, int]:
    """(device, name, memory of one card or of the system in bytes, number of cards)."""
    cuda = _nvml_device()
    if cuda:
        return "cuda", *cuda
    total = psutil.virtual_memory().total
    if sys.platform == "darwin" and _platform.machine() == "arm64":
        return "mps", "Apple Silicon (unified memory)", total, 1
    return "cpu", _platform.processor() or _platform.machine(), total, 1


def card_targets(card_bytes: int) -> tuple[int, int]:
    """The seed's targets for a 12 GB card (clean up above 10 GB, < 2 GB between stages), scaled to the card present."""
    return int(card_bytes * 10 / 12), int(min(2 * GB, card_bytes / 6))


def get_platform_config(**overrides) -> PlatformConfig:
    """Seed defaults per device (a 12 GB card: clean at 10 GB, baseline < 2 GB); overrides win."""
    device, name, total, cards = detect_device()
    if device == "cuda":
        threshold, baseline = card_targets(total)
        defaults = dict(embed_batch_size=64, judge_concurrency=2, pressure_threshold_bytes=threshold, baseline_target_bytes=baseline)
    else:
        defaults = dict(
            embed_batch_size=32,
            judge_concurrency=4,
            pressure_threshold_bytes=int(total * 0.85),
            baseline_target_bytes=int(total * 0.5),  # unified memory: other programs share it
        )
    defaults.update(device=device, device_name=name, memory_total_bytes=total, unload_timeout_s=30.0, device_count=cards)
    defaults.update({key: value for key, value in overrides.items() if value is not None})
    return PlatformConfig(**defaults)


def _nvml_device() -> tuple[str, int, int] | None:
    """(name, memory of the smallest visible card, number of visible cards): thresholds hold on every card."""
    cards = nvml.read_devices()
    if not cards:
        return None
    smallest = min(cards, key=lambda card: card.total_bytes)
    names = sorted({card.name for card in cards})
    return (" + ".join(names) if len(cards) == 1 else f"{len(cards)} × {' + '.join(names)}"), smallest.total_bytes, len(cards)
