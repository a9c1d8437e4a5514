"""Collect a round's answers as soon as they arrive.

Flower's deployment Grid (`HttpGrid.send_and_receive`) sleeps a fixed 3 s between
pulls, so every exchange with the hospitals (a round under secure aggregation has
three) waits up to 3 s after its last answer. `push_messages` and `pull_messages` are
public Grid API: the ServerApp pulls its own exchanges every `interval` seconds instead.
A reply can be listed before its content has reached the SuperLink; Flower then retries
after 1 s, 2 s, ... (`pull_objects`' defaults), and the ServerApp after PULL_BACKOFF_S.
"""

from __future__ import annotations

import functools
import time

from flwr.serverapp import Grid
from flwr.superlink.grid import http_grid
from flwr.supercore.inflatable.inflatable_utils import pull_objects

INTERVAL_S = 0.05  # only while an exchange is waiting for its answers
PULL_BACKOFF_S = (0.05, 1.0)  # first retry, longest wait; Flower's are (1, 10) s


def poll_faster(grid: Grid, interval: float = INTERVAL_S) -> Grid:
    """`grid`, its send_and_receive pulling every `interval` s (same semantics as Flower's)."""

    def send_and_receive(messages, *, timeout: float | None = None):
        pending = set(grid.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies = []
        while timeout is None or time.time() < end:
            pulled = list(grid.pull_messages(pending))
            replies += pulled
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            if not pending:
                break
            time.sleep(interval)
        return replies

    grid.send_and_receive = send_and_receive
    http_grid.pull_objects = functools.partial(pull_objects, initial_backoff=PULL_BACKOFF_S[0],
                                               backoff_cap=PULL_BACKOFF_S[1])
    return grid
