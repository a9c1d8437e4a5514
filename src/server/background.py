"""Work the round loop does not wait for: the report's plots and the dashboard.

Drawing the report's plots takes about 0.3 s of CPU a round (matplotlib), a third of a
FedAvg round's exchange on 2 cores, and the next round needs none of it. One thread does
this work, in order, on copies of what it draws. `results.json` and the checkpoint are
still written by the round loop itself, first, so an interruption loses at most the newest
plots, which a resumed run draws again. A failed task stops the run at the next `submit`
or at `close`: a run does not end with its report silently missing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Background:
    """A single worker thread, its tasks run in the order submitted."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        self.pending: list[Future] = []

    def submit(self, task: Callable, *args) -> None:
        """Queue `task(*args)`; raise the error of an earlier task that failed."""
        self._raise_failed(wait=False)
        self.pending.append(self.pool.submit(task, *args))

    def close(self) -> None:
        """Wait for every task; raise the first error."""
        self.pool.shutdown(wait=True)
        self._raise_failed(wait=True)

    def _raise_failed(self, wait: bool) -> None:
        for future in [f for f in self.pending if wait or f.done()]:
            self.pending.remove(future)
            future.result()
