"""`flower-supernode` with faster polls and a warm worker in place of its per-message processes.

flwr 1.42's SuperNode sleeps a hard-coded 3 s after each pull that finds no message, and
0.5 s between checks for its ClientApp's reply (`flwr.supernode.start_client_internal`;
no option or environment variable sets either). A round under secure aggregation is
three exchanges, so on a federation whose hospitals answer in a second these sleeps
were a large part of every round. This module shortens them: a check for the reply reads
the SuperNode's own memory, every LOCAL_POLL_S; a pull is one small HTTPS request to the
SuperLink, every ACTIVE_POLL_S for ACTIVE_S after the SuperNode last handled a message (in
a round the next one follows within a second or two), else every POLL_S, so an idle
SuperNode makes four per second. A message whose content has not fully reached the
SuperLink is pulled again after 0.05 s rather than Flower's 1 s.

It also reports a heartbeat interval of HEARTBEAT_S (Flower's minimum; its default is 30 s) and
sends its heartbeats accordingly (every ~4 s): the SuperLink answers a message to a SuperNode
silent for two intervals with a "node unavailable" error, so a hospital that vanished mid-round
costs the round ~20 s instead of its `federation.round_timeout`.

Where the SuperNode would start `flower-superexec` (which starts a process per message),
it starts the hospital's warm worker (`src/client/worker.py`) with the same arguments,
plus `--client-app MODULE:ATTR` when given to this module (the ClientApp it runs, from the
hospital's own installation). It starts the worker again if
a signal kills the worker. Otherwise Flower's own entry point runs unchanged.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import subprocess
import sys
import threading
import time

import flwr.supercore.heartbeat as heartbeat
import flwr.supernode.fleet_http_connection as fleet
import flwr.supernode.start_client_internal as internal
from flwr.supercore.exit import ExitCode
from flwr.supernode.cli import flower_supernode

LOCAL_POLL_S, POLL_S = 0.01, 0.25
ACTIVE_POLL_S, ACTIVE_S = 0.05, 3.0
HEARTBEAT_S = 10  # the least the SuperLink accepts
PULL_BACKOFF_S = (0.05, 1.0)  # first retry, longest wait; Flower's are (1, 10) s
RESTART_PAUSE_S, MAX_RESTARTS = 1.0, 5
GRACEFUL = {ExitCode.SUCCESS, ExitCode.GRACEFUL_EXIT_SIGINT, ExitCode.GRACEFUL_EXIT_SIGQUIT,
            ExitCode.GRACEFUL_EXIT_SIGTERM}
log = logging.getLogger(__name__)


class _ShortSleeps:
    """The `time` module as `start_client_internal` sees it, its sleeps shortened: Flower's 3 s
    follows an empty pull, its 0.5 s a look at its own state while a message is handled."""

    last_message = float("-inf")  # when a message was last being handled

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds < 1:
            type(self).last_message = time.monotonic()
            time.sleep(min(seconds, LOCAL_POLL_S))
        else:
            time.sleep(ACTIVE_POLL_S if time.monotonic() - self.last_message < ACTIVE_S else POLL_S)


class _WarmWorker:
    """The `subprocess` module as `start_client_internal` sees it: `flower-superexec` is the warm worker."""

    def __init__(self, client_app: str | None) -> None:
        self.client_app = client_app

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def Popen(self, command: list[str], **kwargs) -> subprocess.Popen:  # noqa: N802 (subprocess's name)
        if command[0] != "flower-superexec":
            return subprocess.Popen(command, **kwargs)
        worker = [sys.executable, "-m", "src.client.worker", *command[1:]]
        if self.client_app:
            worker += ["--client-app", self.client_app]
        first = subprocess.Popen(worker, **kwargs)
        threading.Thread(target=_keep_running, args=(first, worker, kwargs), daemon=True).start()
        return first


def _keep_running(process: subprocess.Popen, command: list[str], kwargs: dict) -> None:
    """Start the worker again each time a signal kills it (SIGKILL, a crash; at most MAX_RESTARTS
    times). A worker that exits by itself is left: gracefully (the SuperNode stopping, SIGINT,
    SIGTERM), or with an error it reports, such as losing its SuperNode while that shuts down."""
    for restarts in range(MAX_RESTARTS + 1):
        code = process.wait()
        if -code in (signal.SIGINT, signal.SIGTERM) or code in GRACEFUL:
            return
        if code > 0:
            log.error("the hospital's worker exited with code %d: leaving it", code)
            return
        if restarts == MAX_RESTARTS:
            log.error("the hospital's worker was killed (signal %d), %d restarts spent: leaving it", -code, restarts)
            return
        log.warning("the hospital's worker was killed (signal %d): restarting it", -code)
        time.sleep(RESTART_PAUSE_S)
        process = subprocess.Popen(command, **kwargs)


def main() -> None:
    """`flower-supernode`'s command line, plus `--client-app MODULE:ATTR`: the ClientApp its worker runs,
    from the hospital's own installation, whatever the run's bundle names."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --help stays Flower's
    parser.add_argument("--client-app", metavar="MODULE:ATTR")
    ours, flowers = parser.parse_known_args()
    internal.time = _ShortSleeps()
    # the message's content can reach the SuperLink after the message: retry within PULL_BACKOFF_S, not 1 s, 2 s, ...
    internal.pull_objects = functools.partial(internal.pull_objects, initial_backoff=PULL_BACKOFF_S[0],
                                              backoff_cap=PULL_BACKOFF_S[1])
    internal.subprocess = _WarmWorker(ours.client_app)
    fleet.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_S      # the interval it reports to the SuperLink
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_S  # and the one it sends at
    sys.argv = ["flower-supernode", *flowers]
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
