"""Work drawn beside the round: the report's plots and the dashboard.

Drawing the report's plots takes 0.2–0.7 s a round on 2 cores (matplotlib). One thread draws them, in order, on copies of what it
draws, while the round goes on (under secure aggregation, while the hospitals unmask the
sum). `results.json` and the checkpoint are still written by the round loop itself, first,
so an interruption loses at most the newest plots (a resumed run draws them again). The
ServerApp `settle`s at the end of each round, before the next one asks any hospital to
train: a run does not end with its report silently missing, and stops on a failed one
before more privacy budget is spent. When the loop itself fails, that failure is the one
raised; a task's is logged beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class Background:
    """A single worker thread, its tasks run in the order submitted; a context manager around the loop."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        self.pending: list[Future] = []

    def submit(self, task: Callable, *args) -> None:
        """Queue `task(*args)`; a failure waits for `settle` (mid-round, a round's answers are still to record)."""
        self.pending.append(self.pool.submit(task, *args))

    def settle(self) -> None:
        """Wait for every queued task; raise the first error (the later ones are logged)."""
        failed = [error for error in (future.exception() for future in self.pending) if error is not None]
        self.pending.clear()  # only once waited for: interrupted here, __exit__ still logs them
        for error in failed[1:]:
            log.error("a report task failed too", exc_info=error)
        if failed:
            raise failed[0]

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None:
            try:
                self.settle()
            finally:
                self.pool.shutdown(wait=True)
            return False
        self.pool.shutdown(wait=True)
        for future in self.pending:
            if future.exception() is not None:
                log.error("a report task failed too", exc_info=future.exception())
        return False  # the loop's own failure goes on
