"""Progress bars for the long steps a user waits on: counts, elapsed time and time left.

rich redraws the bar in place on a terminal; where the output is not a terminal (a
log file, CI) it prints the finished bar once, so nothing appears twice and logs stay
grep-able.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress_bar(description: str, total: int, console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """A bar of `total` steps; yields `advance(n=1)`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
