"""Progress bars per stage (counts and ETA) on stderr; silent under --quiet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .terminal import without_controls

stderr = Console(stderr=True)


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task_id):
        self._progress, self._task_id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task_id, n)


@contextmanager
def bar(description: str, total: int, quiet: bool) -> Iterator[_Bar | _Silent]:
    if quiet or total == 0:
        yield _Silent()
        return
    columns = (
        TextColumn("{task.description}", markup=False),  # a model's name is text, never markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        yield _Bar(progress, progress.add_task(without_controls(description), total=total))
