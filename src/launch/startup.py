"""Bringing a federation's processes up, each step waited for until it is real.

A process that has started is not yet a process that works: the SuperLink is up
once its health endpoint answers, a SuperNode once its log shows the node id the
SuperLink gave it (or, if its key was never registered, once it has been refused).
Each wait ends early with the tail of the process's log should the process exit,
and after ``timeout`` seconds otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import ssl
import sys
import time
import urllib.request
from pathlib import Path

import tomli_w

from src.client.hospital import NODE_CONFIGS
from src.launch.certificates import NodeKeyFiles, write_node_keys, write_tls_files
from src.launch.configs import Hospital, client_app_ref, node_config_arg
from src.launch.control import control_client, register_node
from src.launch.flwr_cli import CONNECTION
from src.launch.processes import ProcessSupervisor, free_port

log = logging.getLogger(__name__)

MARKER = ".fedcxr-federation"      # marks work_dir/federation as ours to clear
ACTIVATED = "SuperNode ID:"        # SuperNode log line once the SuperLink accepted it
REFUSED = "Failed to activate SuperNode"


# ------------------------------------------------------------------ preparation
def flower_bin() -> Path:
    """Folder of the flower-* / flwr console scripts: next to this Python first."""
    here = Path(sys.executable).parent  # not resolved: a venv's bin/python is a symlink
    if (here / "flower-superlink").exists():
        return here
    found = shutil.which("flower-superlink")
    if found:
        return Path(found).parent
    raise RuntimeError(f"flower-superlink not found next to {sys.executable} or on PATH: "
                       "is flwr installed in this environment?")


def prepare_dir(fed: Path) -> Path:
    """``fed``, empty but for ``logs/`` and our marker; a folder we did not make is
    never cleared."""
    if fed.exists():
        if not (fed / MARKER).exists() and any(fed.iterdir()):
            raise RuntimeError(f"{fed} exists and was not made by run_federation; "
                               "refusing to clear it")
        shutil.rmtree(fed)
    (fed / "logs").mkdir(parents=True)
    (fed / MARKER).touch()
    return fed


def flower_env(fed: Path, bin_dir: Path) -> dict[str, str]:
    """The environment of every process of the federation: its own ``FLWR_HOME``."""
    env = os.environ.copy()
    env.update({
        "FLWR_HOME": str(fed / "flwr_home"),
        NODE_CONFIGS: str(fed.parent / "hospitals"),  # simulation's hospitals find their node configs here
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",  # Flower spawns by name
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "RAY_DISABLE_USAGE_STATS": "1",
    })
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")  # default 1 s
    return env


def _write_connection(env: dict[str, str], address: str, ca_cert: Path | None) -> None:
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, str | bool] = {"address": address}
    if ca_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca_cert)
    (home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))


def _wait_healthy(sup: ProcessSupervisor, port: int, ca_cert: Path | None,
                  timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else None
    url = f"{'https' if ca_cert else 'http'}://127.0.0.1:{port}/health"
    deadline = time.monotonic() + timeout
    while True:
        rc = sup.returncode("superlink")
        if rc is not None:
            raise RuntimeError(f"flower-superlink exited with code {rc} while starting; "
                               f"its log ({sup.log_path('superlink')}) ends:\n"
                               f"{sup.tail('superlink')}")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"flower-superlink not healthy on {url} after {timeout:.0f}s; "
                               f"its log ({sup.log_path('superlink')}) ends:\n"
                               f"{sup.tail('superlink')}")
        time.sleep(0.2)


def supernode_name(hospital: str) -> str:
    """The supervisor's name for a hospital's SuperNode process (and its log file)."""
    return f"supernode-{hospital}"


# ------------------------------------------------------------------ startup
def installed_client_app(app_dir: Path) -> str | None:
    """The app's ClientApp (`MODULE:ATTR`) when this environment has it installed (fedcxr's own): the
    hospitals' warm workers run that copy, whatever the run's bundle names. An app that exists
    only in its bundle is loaded from the bundle, as Flower does."""
    ref = client_app_ref(app_dir)
    try:
        return ref if ref and importlib.util.find_spec(ref.partition(":")[0]) else None
    except ImportError:
        return None


def start_deployment(sup: ProcessSupervisor, bin_dir: Path, fed: Path,
                     hospitals: list[Hospital], timeout: float,
                     timings: dict[str, float], client_app: str | None = None) -> None:
    """SuperLink with TLS and SuperNode authentication, the hospitals' keys registered,
    one SuperNode per hospital (its warm worker running `client_app`, the hospital's installed copy, when
    given); returns once
    every registered one has joined and every unregistered one has been refused."""
    t0 = time.monotonic()
    tls = write_tls_files(fed / "certs")
    port = free_port()
    sup.start("superlink", [
        str(bin_dir / "flower-superlink"),
        "--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port),
    ], cwd=fed)
    _wait_healthy(sup, port, tls.ca_cert, timeout)
    _write_connection(sup.env or {}, f"127.0.0.1:{port}", tls.ca_cert)
    timings["superlink_ready"] = time.monotonic() - t0
    log.info("SuperLink up on 127.0.0.1:%d (TLS, SuperNode auth) in %.1fs", port,
             timings["superlink_ready"])

    # register the hospitals' public keys (the Control API request `flwr supernode register` sends)
    t1 = time.monotonic()
    keys: dict[str, NodeKeyFiles] = {h.name: write_node_keys(fed / "certs", h.name)
                                     for h in hospitals}
    with control_client(sup.env or {}) as control:
        for h in hospitals:
            if h.register:
                try:
                    register_node(control, keys[h.name].public_key, h.name)
                except Exception as e:  # httpx or Flower errors: any of them means not registered
                    raise RuntimeError(f"could not register SuperNode {h.name}: {e}") from e
    timings["register"] = time.monotonic() - t1

    t2 = time.monotonic()
    n = len(hospitals)
    for i, h in enumerate(hospitals):
        config = {"partition-id": i, "num-partitions": n, **h.node_config}
        cmd = [sys.executable, "-m", "src.launch.supernode",  # flower-supernode: faster polls, a warm worker
               *(["--client-app", client_app] if client_app else []),
               "--superlink", f"127.0.0.1:{port}",
               "--root-certificates", str(tls.ca_cert),
               "--auth-supernode-private-key", str(keys[h.name].private_key),
               "--node-config", node_config_arg(config),
               "--port", str(free_port())]
        if not h.register:  # give up soon instead of retrying forever
            cmd += ["--max-retries", "1", "--max-wait-time", "10"]
        sup.start(supernode_name(h.name), cmd, cwd=fed)

    # A SuperNode is in once its log shows the node id the SuperLink gave it; one that
    # is not registered must be refused: its process exits (code 305, REFUSED in log).
    waiting = list(hospitals)
    deadline = time.monotonic() + timeout
    while waiting:
        sup.snapshot()
        for h in list(waiting):
            name = supernode_name(h.name)
            joined = ACTIVATED in sup.tail(name, 200)
            rc = sup.returncode(name)
            if joined or (rc is not None and not h.register):
                waiting.remove(h)
                if joined and not h.register:
                    log.warning("SuperNode %s joined although its key is not registered",
                                h.name)
            elif rc is not None:
                raise RuntimeError(f"SuperNode {h.name} exited with code {rc} while "
                                   f"joining; its log ({sup.log_path(name)}) ends:\n"
                                   f"{sup.tail(name)}")
        if waiting and time.monotonic() > deadline:
            h = waiting[0]
            raise RuntimeError(f"SuperNode {h.name} did not join within {timeout:.0f}s; "
                               f"its log ({sup.log_path(supernode_name(h.name))}) ends:\n"
                               f"{sup.tail(supernode_name(h.name))}")
        if waiting:
            time.sleep(0.2)
    timings["supernodes_online"] = time.monotonic() - t2
    log.info("%d SuperNode(s) joined in %.1fs", sum(h.register for h in hospitals),
             timings["supernodes_online"])


def start_simulation(sup: ProcessSupervisor, bin_dir: Path, fed: Path, timeout: float,
                     timings: dict[str, float]) -> None:
    """SuperLink running Flower's simulation engine; returns once it is healthy."""
    t0 = time.monotonic()
    port = free_port()
    sup.start("superlink", [
        str(bin_dir / "flower-superlink"), "--simulation", "--insecure",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port),
    ], cwd=fed)
    _wait_healthy(sup, port, None, timeout)
    _write_connection(sup.env or {}, f"127.0.0.1:{port}", None)
    timings["superlink_ready"] = time.monotonic() - t0
    log.info("simulation SuperLink up on 127.0.0.1:%d in %.1fs", port,
             timings["superlink_ready"])
