"""`flower-supernode`, asking the SuperLink for messages every POLL_S seconds instead of every 3 s.

flwr 1.42's SuperNode sleeps a hard-coded 3 s after each pull that finds no message, and
0.5 s between checks for its ClientApp's reply (`flwr.supernode.start_client_internal`;
no option or environment variable sets either). A round under secure aggregation is
three exchanges, so on a federation whose hospitals answer in a second these sleeps
were a large part of every round. The launcher starts each SuperNode through this
module, which caps those sleeps and otherwise runs Flower's own entry point unchanged.
A pull is one small HTTPS request: at POLL_S a SuperNode makes four per second when idle.
"""

from __future__ import annotations

import sys
import time

import flwr.supernode.start_client_internal as internal
from flwr.supernode.cli import flower_supernode

POLL_S = 0.25


class _ShortSleeps:
    """The `time` module as `start_client_internal` sees it, its sleeps at most POLL_S."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, POLL_S))


if __name__ == "__main__":
    internal.time = _ShortSleeps()
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())
