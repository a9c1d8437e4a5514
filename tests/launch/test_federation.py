"""run_federation: argument checks (fast), then real federations of the toy app (e2e).

The e2e tests start real flower-superlink / flower-supernode processes on loopback and
check, after each, that no process of the federation is left (every process it starts
carries FLWR_HOME=<work_dir>/federation/flwr_home in its environment) and that the
SuperLink's port is free again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from src.launch import startup
from src.launch.configs import Hospital
from src.launch.federation import run_federation
from src.launch.flwr_cli import CONNECTION
from src.launch.processes import flower_descendants, port_in_use

TOY_APP = Path(__file__).parent / "toy_app"
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def processes_of(work_dir: Path) -> dict[int, str]:
    """Live processes whose FLWR_HOME lies under work_dir: {pid: command line}."""
    found = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            home = process.environ().get("FLWR_HOME", "")
        except psutil.Error:
            continue
        if process.info["status"] != psutil.STATUS_ZOMBIE and home.startswith(str(work_dir)):
            found[process.pid] = " ".join(process.info["cmdline"] or ())
    return found


def superlink_port(work_dir: Path) -> int:
    config = tomllib.loads((work_dir / "federation/flwr_home/config.toml").read_text())
    return int(config["superlink"][CONNECTION]["address"].rsplit(":", 1)[1])


def assert_all_gone(work_dir: Path) -> None:
    deadline = time.monotonic() + 5
    while processes_of(work_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of(work_dir) == {}
    assert flower_descendants() == {}
    assert not port_in_use(superlink_port(work_dir))


def _worker_of(hospital: str, work_dir: Path) -> int:
    """The pid of the warm worker (`src.client.worker`) that `hospital`'s SuperNode started."""
    for pid, cmdline in processes_of(work_dir).items():
        if "src.client.worker" in cmdline and hospital in " ".join(psutil.Process(pid).parent().cmdline()):
            return pid
    raise AssertionError(f"no worker of {hospital} among {processes_of(work_dir)}")


class Lines:
    """on_log_line that keeps each line with the time it arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.got.append((time.monotonic(), line))

    def matching(self, text: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.got if text in line]


# ------------------------------------------------------------------ fast checks
@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "cloud"}, "mode"),
    ({"hospitals": []}, "at least one"),
    ({"hospitals": [Hospital("a"), Hospital("a")]}, "unique"),
    ({"hospitals": [Hospital("a/b")]}, "hospital name"),
    ({"kill_after": {"zz": 1.0}}, "unknown hospitals"),
    ({"run_config": {"nope": 1}}, "not declared"),
])
def test_bad_arguments_fail_before_anything_starts(tmp_path: Path, kwargs, match) -> None:
    args = {"app_dir": TOY_APP, "work_dir": tmp_path, "hospitals": [Hospital("a")],
            "run_config": {}} | kwargs
    with pytest.raises(ValueError, match=match):
        run_federation(**args)
    assert not (tmp_path / "federation").exists()


# ------------------------------------------------------------------ end to end
@pytest.mark.e2e
def test_superlink_that_cannot_start_raises_with_its_log(tmp_path: Path,
                                                         monkeypatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(startup, "free_port", lambda host="127.0.0.1": port)
        with pytest.raises(RuntimeError, match=r"(?s)flower-superlink exited.*address "
                                               r"already in use"):
            run_federation(TOY_APP, tmp_path, [Hospital("a")], {}, startup_timeout_s=60)
    assert processes_of(tmp_path) == {}


@pytest.mark.e2e
def test_deployment_completes_refuses_unregistered_and_reports_killed(tmp_path: Path) -> None:
    """TLS + SuperNode auth, 2 hospitals x 2 rounds; an unregistered SuperNode is
    refused; a third hospital killed at submission is reported as failed (the toy
    ServerApp proceeds once min-nodes=2 replies are in). Every message runs in the
    hospitals' warm workers; hospital_1's, killed after round 1, is started again by its
    SuperNode in time for round 2 (the ServerApp pauses 3 s after each round's line, so that
    the kill lands between rounds)."""
    killed: list[int] = []

    def lines_and_kill(line: str) -> None:
        lines(line)
        if line.startswith("TOY round 1/2"):
            killed.append(_worker_of("hospital_1", tmp_path))
            os.kill(killed[0], signal.SIGKILL)

    lines = Lines()
    hospitals = [Hospital(n, {"hospital": n, "manifest": f"/data/{n} manifest.json"})
                 for n in ("hospital_1", "hospital_2", "hospital_3")]
    hospitals.append(Hospital("intruder", {"hospital": "intruder"}, register=False))
    out = run_federation(TOY_APP, tmp_path, hospitals,
                         {"num-server-rounds": 2, "min-nodes": 2, "round-timeout": 120.0, "round-pause": 3.0},
                         on_log_line=lines_and_kill, kill_after={"hospital_3": 0.0}, timeout_s=300)
    assert out.status == "finished:completed", (out, out.log_path.read_text())
    assert out.ok and out.run_id is not None
    assert out.refused_hospitals == ["intruder"]
    assert out.failed_hospitals == ["hospital_3"]
    rounds = lines.matching("TOY round")
    assert [line.split(":")[0] for _, line in rounds] == ["TOY round 1/2", "TOY round 2/2"]
    assert all("from hospital_1,hospital_2," in line for _, line in rounds)
    assert rounds[1][0] - rounds[0][0] > 1.0  # streamed as the rounds happen
    assert out.log_path.read_text().splitlines() == [line for _, line in lines.got]
    fed = tmp_path / "federation"
    superlink_cmd = (fed / "logs/superlink.log").read_text().splitlines()[0]
    for flag in ("--ssl-certfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation"):
        assert flag in superlink_cmd
    assert "Failed to activate SuperNode" in (fed / "logs/supernode-intruder.log").read_text()
    assert killed, "the test did not find hospital_1's worker"
    for name, tasks in (("hospital_1", 2), ("hospital_2", 2)):
        log = (fed / f"logs/supernode-{name}.log").read_text()
        assert log.count(": completed in ") == tasks  # run by the worker, not a flwr-clientapp per message
        assert ("worker was killed (signal 9): restarting it" in log) == (name == "hospital_1")
    assert set(out.timings) >= {"superlink_ready", "supernodes_online", "run", "teardown"}
    assert_all_gone(tmp_path)


@pytest.mark.e2e
def test_keyboard_interrupt_mid_run_tears_simulation_down(tmp_path: Path) -> None:
    """KeyboardInterrupt raised from on_log_line while Ray and the simulation run."""
    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_federation(TOY_APP, tmp_path, [Hospital("a"), Hospital("b")],
                       {"num-server-rounds": 2}, mode="simulation", on_log_line=interrupt,
                       timeout_s=300)
    assert_all_gone(tmp_path)


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from src.launch.federation import Hospital, run_federation
    def show(line):
        print("LINE", line, flush=True)
    run_federation(Path(sys.argv[1]), Path(sys.argv[2]),
                   [Hospital("hospital_1"), Hospital("hospital_2")],
                   {"num-server-rounds": 2}, on_log_line=show, timeout_s=300)
    print("NOT INTERRUPTED", flush=True)
""")


@pytest.mark.e2e
def test_ctrl_c_to_the_foreground_process_group_tears_deployment_down(
        tmp_path: Path) -> None:
    """What a terminal's Ctrl-C does: SIGINT to every process of the foreground group
    (here the launcher runs in a process group of its own, so pytest is spared)."""
    work = tmp_path / "work"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(TOY_APP), str(work)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        for line in child.stdout:  # the run has started: its log is streaming
            if line.startswith("LINE "):
                break
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and "NOT INTERRUPTED" not in out
    assert "KeyboardInterrupt" in err
    assert_all_gone(work)
