"""Start long-running processes with their output in log files; tear whole trees down.

Flower's processes do not stay in the process group they are started in:
``flower-superlink`` and ``flower-supernode`` start ``flower-superexec`` in a new
session, which starts ``flwr-serverapp`` / ``flwr-clientapp`` / ``flwr-simulation``
(and Ray's daemons in simulation mode). ``killpg`` on the first process misses them,
so teardown looks up every descendant (psutil), remembers each one it has seen (pid +
creation time, so a recycled pid is never hit), and, as this process is made a child
subreaper where the OS has one (Linux), also finds grandchildren whose parents died first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil

_PR_SET_CHILD_SUBREAPER = 36
_FLOWER_PREFIXES = ("flower-", "flwr")
_RAY_NAMES = ("raylet", "gcs_server")


def looks_like_flower(cmd: str) -> bool:
    """A Flower (flower-*, flwr, flwr-*) or Ray (raylet, ray::*, ray/...) command line."""
    if cmd.startswith("ray::") or "/ray/" in cmd:
        return True
    for token in cmd.split()[:3]:
        base = os.path.basename(token)
        if base.startswith(_FLOWER_PREFIXES) or base in _RAY_NAMES:
            return True
    return False


# ------------------------------------------------------------------ ports
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def wait_port_free(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while port_in_use(port, host):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ------------------------------------------------------------------ process tree
def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of PID 1.

    Then a grandchild whose parent was killed first is still found (as our child) and
    reaped. Linux only (psutil has no equivalent); returns False where ``prctl`` is
    unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def start_time(pid: int) -> float | None:
    """When ``pid`` started (identifies it across pid reuse); None if it is gone."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return None


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    return False


def cmdline(pid: int) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(psutil.Process(pid).cmdline())
    return ""


def descendants(pid: int) -> set[int]:
    """All descendants of ``pid`` (not ``pid`` itself), whatever their session or group."""
    with contextlib.suppress(psutil.Error):
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    return set()


def flower_descendants(pid: int | None = None) -> dict[int, str]:
    """Descendants of ``pid`` (default: this process) that look like Flower or Ray
    processes: {pid: command line}. Zombies are left out."""
    pid = os.getpid() if pid is None else pid
    out = {}
    for d in descendants(pid):
        cmd = cmdline(d)
        if is_alive(d) and looks_like_flower(cmd):
            out[d] = cmd
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a (log) file, colour codes removed; "" if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(_ANSI.sub("", data).splitlines()[-lines:])


# ------------------------------------------------------------------ signals
@contextlib.contextmanager
def signals_deferred(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[list[int]]:
    """Hold off SIGINT/SIGTERM (e.g. a second Ctrl-C) while a teardown runs.

    Yields the list of signals that arrived; the caller decides what to do with them.
    A no-op outside the main thread (Python only handles signals there).
    """
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    previous = {}
    for signum in signums:
        try:
            previous[signum] = signal.signal(signum, lambda s, _f: arrived.append(s))
        except (ValueError, OSError):
            pass
    try:
        yield arrived
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------ killing
def _send(pids: set[int], sig: int, own_pgrp: int) -> None:
    groups = set()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    # whole groups led by a victim too: catches members we have not seen yet
    for pgid in groups - {own_pgrp, 0, 1}:
        if pgid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


def kill_pids(roots: Iterable[int], *, grace: float = 5.0,
              also: Iterable[int] = ()) -> set[int]:
    """SIGTERM ``roots``, their descendants and ``also``; SIGKILL what is left after
    ``grace`` seconds. Descendants are looked up again before each signal, so a child
    spawned in between is caught. Returns the pids still alive at the end (normally none).
    """
    own = os.getpid()
    own_pgrp = os.getpgrp()
    roots = set(roots)
    extra = set(also)
    victims: set[int] = set()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for root in roots:
            victims |= {root} | descendants(root)
        victims |= extra
        for pid in list(victims):
            victims |= descendants(pid)
        victims.discard(own)
        victims = {p for p in victims if is_alive(p)}
        if not victims:
            break
        _send(victims, sig, own_pgrp)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap_orphans()
            if not any(is_alive(p) for p in victims):
                break
            time.sleep(0.05)
    reap_orphans()
    return {p for p in victims if is_alive(p)}


_MANAGED: set[int] = set()  # pids that a Popen object will wait for: never reap those


def reap_orphans() -> None:
    """Reap zombie children of this process that no ``Popen`` owns (re-parented
    orphans, as this process is a subreaper)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
            if child.pid not in _MANAGED and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


# ------------------------------------------------------------------ supervisor
class ProcessSupervisor:
    """Named long-running processes, each logging to ``log_dir/<name>.log``.

    Every process starts in a new session (a terminal's Ctrl-C reaches only us; we
    decide how they end). ``snapshot()`` records their descendants as they appear;
    ``stop_all()`` kills every tree, everything recorded, and Flower/Ray processes
    re-parented to us. Use as a context manager, or call ``stop_all()`` in a finally.
    """

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        # every descendant ever seen: pid -> (start time, name of the managed root)
        self._seen: dict[int, tuple[float, str]] = {}
        self._preexisting = descendants(os.getpid())
        become_subreaper()

    # -- starting
    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, cmd: list[str], cwd: Path | None = None) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise ValueError(f"a process named {name!r} is already running")
        with open(self.log_path(name), "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, env=self.env, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[name] = proc
        _MANAGED.add(proc.pid)
        self._seen[proc.pid] = (start_time(proc.pid) or 0, name)
        return proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """Manage a process started elsewhere (e.g. with a pipe): stop_all kills it too."""
        self.procs[name] = proc
        _MANAGED.add(proc.pid)
        self._seen[proc.pid] = (start_time(proc.pid) or 0, name)

    # -- watching
    def snapshot(self) -> None:
        """Remember every current descendant of the managed processes."""
        for name, proc in self.procs.items():
            for pid in descendants(proc.pid):
                if pid not in self._seen:
                    st = start_time(pid)
                    if st is not None:
                        self._seen[pid] = (st, name)

    def returncode(self, name: str) -> int | None:
        return self.procs[name].poll()

    def tail(self, name: str, lines: int = 40) -> str:
        return tail(self.log_path(name), lines)

    def _still_ours(self, name: str | None = None) -> set[int]:
        """Recorded pids (of ``name``'s tree, or all) that still run the same process."""
        return {pid for pid, (st, root) in self._seen.items()
                if (name is None or root == name) and is_alive(pid) and start_time(pid) == st}

    # -- stopping
    def kill(self, name: str, grace: float = 5.0) -> int | None:
        """Kill ``name`` and its whole tree (SIGTERM, then SIGKILL after ``grace``)."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        self.snapshot()
        kill_pids({proc.pid}, grace=grace, also=self._still_ours(name))
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self, grace: float = 5.0) -> set[int]:
        """Kill every managed tree and leftovers; safe to call twice. Returns the pids
        that survived (normally none).

        A SIGINT/SIGTERM arriving meanwhile (a second Ctrl-C) is held off until the
        teardown is done, then acted on: KeyboardInterrupt / the SIGTERM handler, unless
        an exception is already on its way out (e.g. the first Ctrl-C's)."""
        with signals_deferred() as arrived:
            with contextlib.suppress(Exception):
                self.snapshot()
            roots = {p.pid for p in self.procs.values() if p.poll() is None}
            leftovers = self._still_ours()
            # orphans re-parented to us (we are a subreaper) that look like Flower/Ray
            ours = flower_descendants()
            leftovers |= {pid for pid in ours if pid not in self._preexisting}
            survivors = kill_pids(roots, grace=grace, also=leftovers)
            for proc in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                _MANAGED.discard(proc.pid)
            reap_orphans()
        if arrived and sys.exc_info()[0] is None:
            if signal.SIGTERM in arrived:
                os.kill(os.getpid(), signal.SIGTERM)  # now with its own handler back
            raise KeyboardInterrupt
        return survivors

    def __enter__(self) -> "ProcessSupervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
