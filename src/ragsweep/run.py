"""What every stage of one run shares: where it writes, what it runs on, how it reports."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .backends.base import Backend, GenerationOptions
from .config import Settings
from .errors import FailureBudgetExceededError
from .platform import PlatformConfig
from .runlog import RunLog
from .store import Store


@dataclass
class RunContext:
    run_id: str
    run_dir: Path
    settings: Settings
    platform: PlatformConfig
    backend: Backend
    store: Store
    log: RunLog
    quiet: bool = False
    model_call_s: float = 0.0  # time spent inside model calls, for the harness-overhead figure
    failures: int = 0  # samples that got no answer
    failure_budget: int | None = None  # stop the run when this many samples failed
    notes: list[str] = field(default_factory=list)  # what was skipped or failed and why

    def count_failures(self, n: int, budgeted: bool = True) -> None:
        """Failed samples; past the budget the run stops (a model that cannot load is skipped, not budgeted)."""
        self.failures += n
        if budgeted and self.failure_budget is not None and self.failures >= self.failure_budget:
            raise FailureBudgetExceededError(f"{self.failures} samples failed, the --max-failures budget is {self.failure_budget}: stopping instead of grinding on")

    def note(self, message: str, stage: str | None = None) -> None:
        """A line for the report; kept as an event so the report can be rebuilt from the store."""
        self.notes.append(message)
        self.log.event("note", stage, message=message)

    @property
    def generation_options(self) -> GenerationOptions:
        s = self.settings
        return GenerationOptions(max_tokens=s.max_tokens, temperature=s.temperature, seed=s.seed, num_ctx=s.num_ctx)


def new_run_id() -> str:
    """Sortable by time, unique across runs started in the same second."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
