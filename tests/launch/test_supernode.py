"""The SuperNode: its warm worker started again when a signal kills it, left when it exits by itself; which
ClientApp it runs; how a task ends in it; how often it polls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from src.launch import supernode
from src.launch.startup import installed_client_app

REPO = Path(__file__).resolve().parents[2]
TOY_APP = Path(__file__).parent / "toy_app"


def _dies(times: int, then: int, count: Path) -> list[str]:
    """A process that is killed (SIGKILL) its first `times` starts, then exits with code `then`."""
    script = (f"import os, signal; from pathlib import Path; p = Path({str(count)!r}); "
              f"n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
              f"os.kill(os.getpid(), signal.SIGKILL) if n < {times} else exit({then})")
    return [sys.executable, "-c", script]


def _keep_running(command: list[str]) -> None:
    supernode._keep_running(subprocess.Popen(command), command, {})


@pytest.mark.parametrize("code", [3, 101])  # Flower's graceful exit on SIGTERM; an error the worker reports
def test_a_killed_worker_is_started_again_until_it_exits_by_itself(tmp_path, monkeypatch, code):
    monkeypatch.setattr(supernode, "RESTART_PAUSE_S", 0.0)
    count = tmp_path / "starts"
    _keep_running(_dies(2, code, count))
    assert count.read_text() == "3"


def test_a_worker_that_exits_with_an_error_is_not_started_again(tmp_path):
    count = tmp_path / "starts"
    _keep_running(_dies(0, 101, count))
    assert count.read_text() == "1"


def test_a_worker_that_keeps_dying_is_left_after_max_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(supernode, "RESTART_PAUSE_S", 0.0)
    count = tmp_path / "starts"
    _keep_running(_dies(100, 0, count))
    assert count.read_text() == str(supernode.MAX_RESTARTS + 1)


def test_workers_run_fedcxrs_installed_client_app_but_load_an_app_only_in_its_bundle_from_it():
    assert installed_client_app(REPO) == "src.client.app:app"
    assert installed_client_app(TOY_APP) is None


def test_a_worker_with_its_own_client_app_never_loads_the_bundles():
    """The bundle (FAB) comes from the coordinator: code it names must not run at the hospital."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import LaunchResultStatus

    from src.client import app as fedcxr_app
    from src.client.worker import WarmExecutor

    run = SimpleNamespace(run_id=1, fab_id="coordinator/evil", fab_version="6.6.6")
    fab = SimpleNamespace(hash_str="ab" * 32, content=b"not even a bundle")
    assert WarmExecutor("src.client.app:app").app(run, fab) is fedcxr_app.app
    agent = SimpleNamespace(task_type=TaskType.AGENT_APP, task_id=2, runtime_dependency_install=True)
    refused = WarmExecutor("src.client.app:app").launch(agent)  # Flower's runner would load the bundle's app
    assert refused.status == LaunchResultStatus.FAILED and "runs only its own ClientApp" in refused.message


def test_the_supernode_looks_at_its_own_state_often_and_at_the_superlink_less(monkeypatch):
    """Flower's 0.5 s (a look at the SuperNode's own memory while it handles a message) becomes
    LOCAL_POLL_S; its 3 s after an empty pull (a request to the SuperLink) becomes ACTIVE_POLL_S
    for ACTIVE_S after a message, POLL_S once it has been idle longer."""
    slept: list[float] = []
    now = [1000.0]
    monkeypatch.setattr(supernode, "time", SimpleNamespace(sleep=slept.append, monotonic=lambda: now[0]))
    monkeypatch.setattr(supernode._ShortSleeps, "last_message", float("-inf"))
    sleeps = supernode._ShortSleeps()
    sleeps.sleep(3)  # idle since it started
    sleeps.sleep(0.5)  # a message is handled
    now[0] += supernode.ACTIVE_S / 2
    sleeps.sleep(3)  # the next message of the round is due
    now[0] += supernode.ACTIVE_S
    sleeps.sleep(3)  # idle again
    sleeps.sleep(0.001)
    assert slept == [supernode.POLL_S, supernode.LOCAL_POLL_S, supernode.ACTIVE_POLL_S, supernode.POLL_S, 0.001]


@pytest.mark.parametrize("fails", [False, True])
def test_a_task_stops_its_heartbeat_before_it_pushes_its_output(monkeypatch, fails):
    """Pushing the output ends the task's token; a heartbeat after it is refused, and Flower answers a refused
    heartbeat with SIGINT to the whole process: the warm worker, not just the task. So the heartbeat is stopped
    (its thread joined) first, whether the ClientApp answered or raised."""
    from src.client import worker

    calls: list[str] = []

    class Heartbeat:
        is_running = False

        def __init__(self, fn):
            pass

        def start(self):
            type(self).is_running = True
            calls.append("heartbeat started")

        def stop(self):
            type(self).is_running = False
            calls.append("heartbeat stopped")

    def app(message, context):
        if fails:
            raise RuntimeError("the handler failed")
        return "reply"

    client = SimpleNamespace(close=lambda: calls.append("closed"))
    monkeypatch.setattr(worker, "HeartbeatSender", Heartbeat)
    monkeypatch.setattr(worker, "make_task_heartbeat_fn_http", lambda client: None)
    monkeypatch.setattr(worker.RuntimeHttpClient, "from_server_address", lambda **kwargs: client)
    monkeypatch.setattr(worker, "validate_and_resolve_root_certificates", lambda path, insecure: None)
    monkeypatch.setattr(worker, "pull_task_input", lambda c: (SimpleNamespace(), "context", "run", "fab"))
    monkeypatch.setattr(worker, "Message", lambda error, reply_to: "error reply")
    monkeypatch.setattr(worker, "push_message", lambda c, reply, context: calls.append(f"pushed {reply}"))
    monkeypatch.setattr(worker, "push_task_output",
                        lambda client, context, sub_status, details: calls.append(f"output {sub_status}"))
    executor = worker.WarmExecutor(None)
    monkeypatch.setattr(executor, "app", lambda run, fab: app)
    spec = SimpleNamespace(runtime_api_address="127.0.0.1:1", insecure=True, root_certificates_path=None, token="t")

    status = executor.run_task(spec)

    assert calls == ["heartbeat started", f"pushed {'error reply' if fails else 'reply'}", "heartbeat stopped",
                     f"output {status}", "closed"]
