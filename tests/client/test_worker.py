"""The hospital's warm worker: a hand-over gives the handler's answer and state, a missing worker runs it here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing.connection import Client
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from src.client import worker
from src.launch.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _message() -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    return Message(RecordDict({"config": ConfigRecord({"x": 2})}), dst_node_id=7, message_type="train")


def double(msg: Message, context: Context) -> Message:
    """A handler that answers and leaves state behind, as secure aggregation's does."""
    context.state["seen"] = ConfigRecord({"x": msg.content["config"]["x"]})
    if "old" in context.state:
        del context.state["old"]
    return Message(RecordDict({"result": ConfigRecord({"x": 2 * msg.content["config"]["x"]})}), reply_to=msg)


def _context(tmp_path: Path, **settings) -> Context:
    return Context(run_id=1, node_id=7, node_config={"manifest": str(tmp_path / "h.json"), **settings},
                   state=RecordDict({"old": ConfigRecord({"gone": True})}), run_config={})


def test_without_a_worker_the_handler_runs_here(tmp_path):
    context = _context(tmp_path)
    reply = worker.delegate(double, _message(), context)
    assert reply.content["result"]["x"] == 4 and set(context.state) == {"seen"}


def test_an_unreachable_worker_falls_back_to_this_process(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    context = _context(tmp_path, worker=f"127.0.0.1:{free_port()}", **{"worker-key": str(key)})
    assert worker.delegate(double, _message(), context).content["result"]["x"] == 4


@pytest.fixture
def running_worker(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "src.client.worker", address, str(key),
                             "--handlers", "tests.client.test_worker"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            Client(worker._address(address), authkey=key.read_bytes()).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.2)
    yield address, key
    proc.kill()
    proc.wait()


def fails(msg: Message, context: Context) -> Message:
    raise ValueError("no such image")


def test_the_worker_runs_the_named_handler_and_returns_its_state(tmp_path, running_worker):
    address, key = running_worker
    context = _context(tmp_path, worker=address, **{"worker-key": str(key)})
    msg = _message()
    reply = worker.delegate(double, msg, context)
    assert reply.content["result"]["x"] == 4 and reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert set(context.state) == {"seen"} and context.state["seen"]["x"] == 2  # the worker's changes, deletions too
    with pytest.raises(RuntimeError, match="hospital worker, fails: ValueError: no such image"):
        worker.delegate(fails, _message(), context)
    assert worker.delegate(double, _message(), context).content["result"]["x"] == 4  # still serving


def test_a_peer_without_the_key_is_refused_and_the_worker_keeps_serving(tmp_path, running_worker):
    address, key = running_worker
    with pytest.raises(Exception):
        Client(worker._address(address), authkey=b"wrong key").close()
    Client(worker._address(address), authkey=key.read_bytes()).close()


def test_the_worker_stops_when_its_launcher_is_gone(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = subprocess.Popen([sys.executable, "-m", "src.client.worker", f"127.0.0.1:{free_port()}", str(key),
                             "--handlers", "tests.client.test_worker", "--parent-pid", str(parent.pid)], cwd=ROOT)
    try:
        parent.kill()
        parent.wait()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
