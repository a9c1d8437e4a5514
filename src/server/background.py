"""Work the round loop does not wait for: the report's plots and the dashboard.

Drawing the report's plots takes about 0.3 s of CPU a round (matplotlib), a third of a
FedAvg round's exchange on 2 cores, and the next round needs none of it. One thread does
this work, in order, on copies of what it draws. `results.json` and the checkpoint are
still written by the round loop itself, first, so an interruption loses at most the newest
plots (a resumed run with rounds left draws them again). A failed task stops the run at the
next `submit` or when the loop ends: a run does not end with its report silently missing.
When the loop itself fails, that failure is the one raised; a task's is logged beside it.
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
        """Queue `task(*args)`; raise the error of an earlier task that failed."""
        self._raise_failed(wait=False)
        self.pending.append(self.pool.submit(task, *args))

    def close(self) -> None:
        """Wait for every task; raise the first error (the later ones are logged)."""
        self.pool.shutdown(wait=True)
        failed = [f.exception() for f in self.pending if f.exception() is not None]
        self.pending.clear()
        for error in failed[1:]:
            log.error("a report task failed too", exc_info=error)
        if failed:
            raise failed[0]

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None:
            self.close()
            return False
        self.pool.shutdown(wait=True)
        for future in self.pending:
            if future.exception() is not None:
                log.error("a report task failed too", exc_info=future.exception())
        return False  # the loop's own failure goes on

    def _raise_failed(self, wait: bool) -> None:
        for future in [f for f in self.pending if wait or f.done()]:
            self.pending.remove(future)
            future.result()
