"""Process trees are killed whole, whatever session their members are in; ports freed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from src.launch import processes as P

# A root that listens on a port and starts, in a NEW SESSION (like flower-superexec),
# a middle process that starts a grandchild and then EXITS once told to (file `go`),
# leaving the grandchild an orphan. The grandchild ignores SIGTERM: only SIGKILL works.
TREE = textwrap.dedent("""
    import os, signal, socket, subprocess, sys, time
    mode, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "root":
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port)); s.listen()
        subprocess.Popen([sys.executable, __file__, "middle", "0", d], start_new_session=True)
        while True: time.sleep(1)
    elif mode == "middle":
        p = subprocess.Popen([sys.executable, __file__, "grandchild", "0", d],
                             start_new_session=True)
        open(os.path.join(d, "grandchild.pid"), "w").write(str(p.pid))
        while not os.path.exists(os.path.join(d, "go")): time.sleep(0.05)
        os._exit(0)   # the grandchild is orphaned now
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True: time.sleep(1)
""")


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _start_tree(tmp_path: Path, sup: P.ProcessSupervisor) -> tuple[subprocess.Popen, int, int]:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    port = P.free_port()
    root = sup.start("root", [sys.executable, str(script), "root", str(port), str(tmp_path)])
    pid_file = tmp_path / "grandchild.pid"
    _wait_for(lambda: pid_file.exists() and pid_file.read_text() and P.port_in_use(port))
    return root, port, int(pid_file.read_text())


def test_tree_with_orphaned_grandchild_in_new_session_is_killed(tmp_path: Path) -> None:
    sup = P.ProcessSupervisor(tmp_path / "logs")
    try:
        root, port, grandchild = _start_tree(tmp_path, sup)
        assert os.getsid(grandchild) != os.getsid(root.pid) != os.getsid(0)
        assert grandchild in P.descendants(root.pid)
        sup.snapshot()                       # seen while the tree is whole
        (tmp_path / "go").touch()            # middle exits: grandchild re-parented
        _wait_for(lambda: grandchild not in P.descendants(root.pid))
    finally:
        survivors = sup.stop_all(grace=0.5)  # grandchild ignores SIGTERM -> SIGKILL
    assert survivors == set()
    assert root.poll() is not None
    assert not P.is_alive(grandchild)
    assert P.wait_port_free(port, timeout=5)
    assert P.flower_descendants() == {}
    assert "$ " in sup.tail("root")          # the command line heads its log


def test_kill_one_tree_leaves_others(tmp_path: Path) -> None:
    sup = P.ProcessSupervisor(tmp_path / "logs")
    try:
        root, port, grandchild = _start_tree(tmp_path, sup)
        other = sup.start("other", [sys.executable, "-c", "import time; time.sleep(60)"])
        rc = sup.kill("root", grace=0.5)
        assert rc == -signal.SIGTERM
        assert not P.is_alive(grandchild)
        assert P.wait_port_free(port, timeout=5)
        assert other.poll() is None
    finally:
        sup.stop_all(grace=0.5)
    assert other.poll() is not None


def test_second_ctrl_c_during_teardown_is_held_off(tmp_path: Path) -> None:
    """SIGINT arriving during stop_all does not cut the teardown short; it is raised
    as KeyboardInterrupt once everything is down."""
    sup = P.ProcessSupervisor(tmp_path / "logs")
    proc = sup.start("stubborn", [sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, "
                                  "signal.SIG_IGN); open('ready', 'w'); time.sleep(60)"],
                     cwd=tmp_path)
    _wait_for(lambda: (tmp_path / "ready").exists())
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()  # fires while stop_all waits out the 1 s SIGTERM grace
    with pytest.raises(KeyboardInterrupt):
        sup.stop_all(grace=1.0)
    timer.join()
    assert proc.poll() == -signal.SIGKILL


def test_free_port_and_looks_like_flower() -> None:
    port = P.free_port()
    assert 1024 < port < 65536 and not P.port_in_use(port)
    assert P.looks_like_flower("/v/bin/python /v/bin/flower-superexec --plugin-type x")
    assert P.looks_like_flower("/v/bin/python /v/bin/flwr log 1 c --stream")
    assert P.looks_like_flower("ray::IDLE")
    assert not P.looks_like_flower("/usr/bin/python -m pytest tests/")


@pytest.mark.parametrize("lines", [1, 3])
def test_tail(tmp_path: Path, lines: int) -> None:
    f = tmp_path / "x.log"
    f.write_text("a\nb\nc\nd\n")
    assert P.tail(f, lines) == "\n".join("abcd"[-lines:])
    assert P.tail(tmp_path / "missing.log") == ""
