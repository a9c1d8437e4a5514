"""Following a submitted run to its end, its log delivered line by line as it comes.

``flwr log --stream`` gives the log but not reliably the end: a stream can stop
before the run does, and a ServerApp that dies leaves the run "running" for a
while. So the end is read from the run's status (the Control API request of `flwr ls`,
sent from this process: src/launch/control.py) every ``STATUS_POLL_S``, every
``URGENT_POLL_S`` once the stream has stopped or the log has shown an "Exit Code", and
a ServerApp that died is reported as failed after ``CRASH_GRACE_S`` even if its status
has not caught up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from src.launch.control import control_client, run_status
from src.launch.flwr_cli import CONNECTION, FlwrCli
from src.launch.processes import ProcessSupervisor
from src.launch.startup import supernode_name

log = logging.getLogger(__name__)

STATUS_POLL_S = 10.0               # the run's status while its log streams: a fallback, the end shows first as
                                   # the stream stopping (rounds were as fast with 1 s, 10 s or 30 s here)
URGENT_POLL_S = 0.2                # ... and this often once the stream has stopped or the ServerApp died
CRASH_GRACE_S = 5.0                # after "Exit Code", wait this long for the status to say so
STREAM_GRACE_S = 1.0               # a stream that stopped this long ago, its run still going, is restarted
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _is_cli_chatter(line: str) -> bool:
    """The `flwr log` CLI's own lines, not the run's."""
    return (line.startswith("Using SuperLink:") or "Starting logstream for run_id" in line
            or "Exiting logstream" in line)


class _LogStream:
    """`flwr log <run> --stream` in the background; its lines go to a queue. Restarted
    (skipping the lines already read: a stream replays the log from its start) should
    it end before the run does."""

    def __init__(self, cli: FlwrCli, run_id: int):
        self.cli, self.run_id = cli, run_id
        self.lines: queue.Queue[str] = queue.Queue()
        self.read = 0          # raw lines read so far, over all the streams
        self.proc: subprocess.Popen | None = None
        self.ended = threading.Event()
        self.ended_at = 0.0    # when the latest stream stopped
        self.restarts = 0

    def start(self) -> None:
        self.ended.clear()
        self.proc = self.cli.start("log", str(self.run_id), CONNECTION, "--stream")
        threading.Thread(target=self._read, args=(self.proc, self.read), daemon=True,
                         name=f"flwr-log-{self.run_id}").start()

    def _read(self, proc: subprocess.Popen, skip: int) -> None:
        assert proc.stdout is not None
        index = 0
        with contextlib.suppress(ValueError, OSError):  # pipe closed by a teardown
            for raw in proc.stdout:
                index += 1
                if index <= skip:
                    continue
                self.read = index
                line = _ANSI.sub("", raw.rstrip("\r\n"))
                if not _is_cli_chatter(line):
                    self.lines.put(line)
        self.ended_at = time.monotonic()
        self.ended.set()

    def restart(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.restarts += 1
        self.start()


def follow_run(sup: ProcessSupervisor, cli: FlwrCli, run_id: int, log_path: Path,
               on_log_line: Callable[[str], object], kill_after: dict[str, float],
               timeout_s: float) -> tuple[str, str]:
    """Stream the run's log until it ends; returns (status, details). ``kill_after``:
    {hospital: seconds from now} after which its SuperNode is killed."""
    start = time.monotonic()
    deadline = start + timeout_s
    kills = {name: start + secs for name, secs in kill_after.items()}
    stream = _LogStream(cli, run_id)
    stream.start()
    last_status = start
    crash_at: float | None = None
    crash_lines: list[str] = []
    status, details = "", ""
    last_snapshot = 0.0

    with open(log_path, "a", encoding="utf-8") as out, control_client(sup.env or {}) as control:
        def deliver(block: float) -> None:
            nonlocal crash_at
            try:
                line = stream.lines.get(timeout=block) if block else stream.lines.get_nowait()
            except queue.Empty:
                return
            while True:
                out.write(line + "\n")
                out.flush()
                if crash_at is None and "Exit Code:" in line:
                    crash_at = time.monotonic()
                if crash_at is not None and len(crash_lines) < 12 and line.strip():
                    crash_lines.append(line.strip())
                on_log_line(line)
                try:
                    line = stream.lines.get_nowait()
                except queue.Empty:
                    return

        while True:
            deliver(0.2)
            now = time.monotonic()
            if now - last_snapshot > 1.0:
                sup.snapshot()
                last_snapshot = now
            for name, due in list(kills.items()):
                if now >= due:
                    del kills[name]
                    log.info("kill_after: killing the SuperNode of %s", name)
                    sup.kill(supernode_name(name))
            if (rc := sup.returncode("superlink")) is not None:
                return "superlink-exited", (f"flower-superlink exited with code {rc}; its log "
                                            f"ends:\n{sup.tail('superlink')}")
            urgent = (stream.ended.is_set() and stream.restarts < 20) or crash_at is not None
            if now >= last_status + (URGENT_POLL_S if urgent else STATUS_POLL_S):
                last_status = now
                try:
                    status, details = run_status(control, run_id)
                except Exception as e:  # the SuperLink busy or going: ask again next time
                    log.debug("status of run %d: %s", run_id, e)
                    status = ""
                if status.startswith("finished"):
                    break
                if stream.ended.is_set() and stream.restarts < 20 and now - stream.ended_at > STREAM_GRACE_S:
                    stream.restart()  # the stream ended early: carry on where it was
            if crash_at is not None and now - crash_at > CRASH_GRACE_S:
                status = "finished:failed"
                details = "ServerApp exited: " + " | ".join(crash_lines)
                break
            if now > deadline:
                cli.run("stop", str(run_id), CONNECTION, timeout=30)
                status, details = "timeout", f"run {run_id} not finished after {timeout_s:.0f}s"
                break
        # the stream ends by itself once the run has finished: let it flush its tail
        stream.ended.wait(timeout=3.0)
        deliver(0.0)
    return status, details
