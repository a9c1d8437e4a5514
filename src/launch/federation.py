"""Run a Flower app as a whole federation on this machine, and always clean up.

``run_federation(app_dir, work_dir, hospitals, run_config, mode=...)``:

- ``mode="deployment"``: a ``flower-superlink`` and one ``flower-supernode`` per
  hospital, real OS processes on loopback, TLS on (a throw-away CA), SuperNode
  authentication on (each SuperNode's EC key registered with
  ``flwr supernode register``), runtime dependency installation off. Each SuperNode
  gets its hospital's ``node_config`` plus ``partition-id`` (its index in
  ``hospitals``) and ``num-partitions``.
- ``mode="simulation"``: Flower's simulation engine (``flower-superlink --simulation``)
  with ``num-supernodes=len(hospitals)``, one CPU per virtual node. A virtual node's
  node config only holds ``partition-id`` and ``num-partitions``: **the i-th hospital
  is partition-id i**, and the ServerApp/ClientApp must read whatever else they need
  about hospitals from the run config.

In both modes the run is submitted with ``flwr run <app_dir> --run-config <toml>``, its
log (``flwr log --stream``) goes line by line to ``on_log_line`` as it arrives and to
``Outcome.log_path``, and its end is read from ``flwr ls``; a ServerApp that dies
("Exit Code: ..." in its log) is reported as failed within seconds. Every process is
torn down whatever happens: completion, failure, exception, Ctrl-C, SIGTERM.

Everything lives under ``work_dir/federation/``: ``certs/`` (CA, server certificate,
SuperNode keys), ``flwr_home/`` (``FLWR_HOME`` of every process: CLI connection
config, unpacked apps), ``logs/<process>.log``, ``run_config.toml``, ``state.db``,
``run.log`` (the run's log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from src.launch.certificates import NodeKeyFiles, write_node_keys, write_tls_files
from src.launch.processes import ProcessSupervisor, free_port

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

CONNECTION = "fedcxr"              # name of the SuperLink connection in config.toml
MARKER = ".fedcxr-federation"      # marks work_dir/federation as ours to clear
LS_POLL_S = 8.0                    # `flwr ls` fallback cadence (each call ~1.3 s CPU)
CRASH_GRACE_S = 5.0                # after "Exit Code", wait this long for `flwr ls`
ACTIVATED = "SuperNode ID:"        # SuperNode log line once the SuperLink accepted it
REFUSED = "Failed to activate SuperNode"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SCALAR = (str, int, float, bool)


@dataclass
class Hospital:
    """One SuperNode. ``register=False`` starts it with a key the SuperLink does not
    know, so it must be refused (to test authentication)."""

    name: str
    node_config: dict[str, str | int | float | bool] = field(default_factory=dict)
    register: bool = True


@dataclass
class Outcome:
    """How a run ended.

    status: ``finished:completed`` | ``finished:failed`` | ``finished:stopped`` (Flower's
    own) | ``refused`` (``flwr run`` rejected the submission) | ``timeout`` |
    ``superlink-exited``. ``failed_hospitals``: SuperNodes whose process exited before
    the end (killed, crashed); ``refused_hospitals``: SuperNodes the SuperLink refused
    (not registered). ``timings``: seconds per phase.
    """

    run_id: int | None
    status: str
    details: str
    log_path: Path
    failed_hospitals: list[str] = field(default_factory=list)
    refused_hospitals: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


# ------------------------------------------------------------------ validation
def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name or ""):
        raise ValueError(f"hospital name {name!r}: expected letters, digits, '_', '.', '-' "
                         "(it names files and processes)")


def app_config_keys(app_dir: Path) -> set[str]:
    """The run-config keys an app declares in ``[tool.flwr.app.config]``, flattened the
    way Flower does (``a.b`` for nested tables)."""
    pyproject = Path(app_dir) / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{pyproject}: cannot read the Flower app config ({err})") from err
    app = data.get("tool", {}).get("flwr", {}).get("app")
    if not isinstance(app, dict):
        raise ValueError(f"{pyproject}: no [tool.flwr.app] table; not a Flower app")

    def flat(d: dict, prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for k, v in d.items():
            keys |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return keys

    return flat(app.get("config", {}))


def check_run_config(run_config: dict, app_dir: Path | None = None) -> None:
    """Values must be str/int/float/bool; with ``app_dir``, every key must be declared
    in the app's ``[tool.flwr.app.config]`` (Flower refuses unknown keys)."""
    for key, value in run_config.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"run config key {key!r}: expected a non-empty string")
        if not isinstance(value, _SCALAR):
            raise ValueError(f"run config key {key!r}: expected str, int, float or bool, "
                             f"got {type(value).__name__} {value!r}")
    if app_dir is not None:
        unknown = sorted(set(run_config) - app_config_keys(app_dir))
        if unknown:
            raise ValueError(
                f"run config keys {unknown} are not declared in [tool.flwr.app.config] of "
                f"{Path(app_dir) / 'pyproject.toml'}; Flower only accepts declared keys")


def node_config_arg(config: dict[str, str | int | float | bool]) -> str:
    """``--node-config`` value: space-separated ``key=<TOML value>`` pairs."""
    parts = []
    for key, value in config.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"node config key {key!r}: expected letters, digits, _ . -")
        if isinstance(value, str):
            if "\n" in value or ('"' in value and "'" in value):
                raise ValueError(f"node config {key}={value!r}: newlines, or both quote "
                                 "characters, cannot be passed to flower-supernode")
            # Flower splits on `"..."` / `'...'` without escapes: pick a quote not in value
            text = json.dumps(value, ensure_ascii=False) if '"' not in value else f"'{value}'"
        elif isinstance(value, _SCALAR):
            text = tomli_w.dumps({"v": value}).split("=", 1)[1].strip()
        else:
            raise ValueError(f"node config key {key!r}: expected str, int, float or bool, "
                             f"got {type(value).__name__}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


# ------------------------------------------------------------------ helpers
def _flower_bin() -> Path:
    """Folder of the flower-* / flwr console scripts: next to this Python first."""
    here = Path(sys.executable).parent  # not resolved: a venv's bin/python is a symlink
    if (here / "flower-superlink").exists():
        return here
    found = shutil.which("flower-superlink")
    if found:
        return Path(found).parent
    raise RuntimeError(f"flower-superlink not found next to {sys.executable} or on PATH: "
                       "is flwr installed in this environment?")


def _prepare_dir(fed: Path) -> Path:
    if fed.exists():
        if not (fed / MARKER).exists() and any(fed.iterdir()):
            raise RuntimeError(f"{fed} exists and was not made by run_federation; "
                               "refusing to clear it")
        shutil.rmtree(fed)
    (fed / "logs").mkdir(parents=True)
    (fed / MARKER).touch()
    return fed


def _env(fed: Path, bin_dir: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update({
        "FLWR_HOME": str(fed / "flwr_home"),
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


def _json(text: str) -> dict:
    """The JSON object a `flwr ... --format json` prints (after other chatter)."""
    for match in re.finditer(r"^\{", text, re.M):
        try:
            return json.loads(text[match.start():])
        except json.JSONDecodeError:
            continue
    return {}


class _Cli:
    """`flwr` CLI calls, each in its own session (a terminal Ctrl-C reaches only us) and
    adopted by the supervisor so that teardown kills one still running."""

    def __init__(self, bin_dir: Path, env: dict[str, str], sup: ProcessSupervisor):
        self.flwr, self.env, self.sup, self._n = str(bin_dir / "flwr"), env, sup, 0

    def start(self, *args: str) -> subprocess.Popen:
        self._n += 1
        proc = subprocess.Popen([self.flwr, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        self.sup.adopt(f"flwr-cli-{self._n}", proc)
        return proc

    def run(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        proc = self.start(*args)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise RuntimeError(f"`flwr {' '.join(args)}` took over {timeout:.0f}s:\n"
                               f"{out[-3000:]}") from None
        return proc.returncode, out


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


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) in the main thread, so that the
    finally clauses (teardown) run. Left alone if someone installed a handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _supernode_name(h: Hospital) -> str:
    return f"supernode-{h.name}"


# ------------------------------------------------------------------ startup
def _start_deployment(sup: ProcessSupervisor, cli: _Cli, bin_dir: Path, fed: Path,
                      hospitals: list[Hospital], timeout: float,
                      timings: dict[str, float]) -> None:
    t0 = time.monotonic()
    tls = write_tls_files(fed / "certs")
    port = free_port()
    sup.start("superlink", [
        str(bin_dir / "flower-superlink"),
        "--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port), "--database", str(fed / "state.db"),
    ], cwd=fed)
    _wait_healthy(sup, port, tls.ca_cert, timeout)
    _write_connection(sup.env or {}, f"127.0.0.1:{port}", tls.ca_cert)
    timings["superlink_ready"] = time.monotonic() - t0
    log.info("SuperLink up on 127.0.0.1:%d (TLS, SuperNode auth) in %.1fs", port,
             timings["superlink_ready"])

    # register the hospitals' public keys, all at once
    t1 = time.monotonic()
    keys: dict[str, NodeKeyFiles] = {h.name: write_node_keys(fed / "certs", h.name)
                                     for h in hospitals}
    pending = {h.name: cli.start("supernode", "register", str(keys[h.name].public_key),
                                 CONNECTION, "--name", h.name, "--format", "json")
               for h in hospitals if h.register}
    for name, proc in pending.items():
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`flwr supernode register` for {name} took over "
                               f"{timeout:.0f}s") from None
        if not _json(out).get("success"):
            raise RuntimeError(f"could not register SuperNode {name}:\n{out[-3000:]}")
    timings["register"] = time.monotonic() - t1

    t2 = time.monotonic()
    n = len(hospitals)
    for i, h in enumerate(hospitals):
        config = {"partition-id": i, "num-partitions": n, **h.node_config}
        cmd = [str(bin_dir / "flower-supernode"),
               "--superlink", f"127.0.0.1:{port}",
               "--root-certificates", str(tls.ca_cert),
               "--auth-supernode-private-key", str(keys[h.name].private_key),
               "--node-config", node_config_arg(config),
               "--port", str(free_port())]
        if not h.register:  # give up soon instead of retrying forever
            cmd += ["--max-retries", "1", "--max-wait-time", "10"]
        sup.start(_supernode_name(h), cmd, cwd=fed)

    # A SuperNode is in once its log shows the node id the SuperLink gave it; one that
    # is not registered must be refused: its process exits (code 305, REFUSED in log).
    waiting = list(hospitals)
    deadline = time.monotonic() + timeout
    while waiting:
        sup.snapshot()
        for h in list(waiting):
            name = _supernode_name(h)
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
                               f"its log ({sup.log_path(_supernode_name(h))}) ends:\n"
                               f"{sup.tail(_supernode_name(h))}")
        if waiting:
            time.sleep(0.2)
    timings["supernodes_online"] = time.monotonic() - t2
    log.info("%d SuperNode(s) joined in %.1fs", sum(h.register for h in hospitals),
             timings["supernodes_online"])


def _start_simulation(sup: ProcessSupervisor, bin_dir: Path, fed: Path, timeout: float,
                      timings: dict[str, float]) -> None:
    t0 = time.monotonic()
    port = free_port()
    sup.start("superlink", [
        str(bin_dir / "flower-superlink"), "--simulation", "--insecure",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port), "--database", str(fed / "state.db"),
    ], cwd=fed)
    _wait_healthy(sup, port, None, timeout)
    _write_connection(sup.env or {}, f"127.0.0.1:{port}", None)
    timings["superlink_ready"] = time.monotonic() - t0
    log.info("simulation SuperLink up on 127.0.0.1:%d in %.1fs", port,
             timings["superlink_ready"])


# ------------------------------------------------------------------ following a run
def _is_cli_chatter(line: str) -> bool:
    """The `flwr log` CLI's own lines, not the run's."""
    return (line.startswith("Using SuperLink:") or "Starting logstream for run_id" in line
            or "Exiting logstream" in line)


class _LogStream:
    """`flwr log <run> --stream` in the background; its lines go to a queue. Restarted
    (skipping the lines already read: a stream replays the log from its start) should
    it end before the run does."""

    def __init__(self, cli: _Cli, run_id: int):
        self.cli, self.run_id = cli, run_id
        self.lines: queue.Queue[str] = queue.Queue()
        self.read = 0          # raw lines read so far, over all the streams
        self.proc: subprocess.Popen | None = None
        self.ended = threading.Event()
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
        self.ended.set()

    def restart(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.restarts += 1
        self.start()


def _follow(sup: ProcessSupervisor, cli: _Cli, run_id: int, hospitals: list[Hospital],
            log_path: Path, on_log_line: Callable[[str], object],
            kill_after: dict[str, float], timeout_s: float) -> tuple[str, str]:
    """Stream the run's log until it ends; returns (status, details)."""
    start = time.monotonic()
    deadline = start + timeout_s
    kills = {name: start + secs for name, secs in kill_after.items()}
    stream = _LogStream(cli, run_id)
    stream.start()
    ls_proc: subprocess.Popen | None = None
    last_ls = start
    crash_at: float | None = None
    crash_lines: list[str] = []
    status, details = "", ""
    last_snapshot = 0.0

    with open(log_path, "a", encoding="utf-8") as out:
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
                    sup.kill(_supernode_name(next(h for h in hospitals if h.name == name)))
            if (rc := sup.returncode("superlink")) is not None:
                return "superlink-exited", (f"flower-superlink exited with code {rc}; its log "
                                            f"ends:\n{sup.tail('superlink')}")
            # `flwr ls`, asynchronously (a call takes ~2 s): right after the log stream
            # ended or the ServerApp crashed (then every 2 s), else every LS_POLL_S
            if ls_proc is not None and ls_proc.poll() is not None:
                run = (_json(ls_proc.stdout.read() if ls_proc.stdout else "").get("runs")
                       or [{}])[0]
                ls_proc = None
                if str(run.get("status", "")).startswith("finished"):
                    status = str(run["status"])
                    details = str(run.get("status-details", ""))
                    details = "" if details == "N/A" else details
                    break
                if stream.ended.is_set() and stream.restarts < 20:
                    stream.restart()  # the stream ended early: carry on where it was
            urgent = (stream.ended.is_set() and stream.restarts < 20) or crash_at is not None
            if ls_proc is None and now >= last_ls + (2.0 if urgent else LS_POLL_S):
                ls_proc = cli.start("ls", CONNECTION, "--run-id", str(run_id),
                                    "--format", "json")
                last_ls = now
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
        if ls_proc is not None and ls_proc.poll() is None:
            ls_proc.kill()
    return status, details


# ------------------------------------------------------------------ public API
def run_federation(app_dir: Path, work_dir: Path, hospitals: list[Hospital],
                   run_config: dict, mode: str = "deployment", timeout_s: float = 600,
                   on_log_line: Callable[[str], object] = print,
                   kill_after: dict[str, float] | None = None,
                   startup_timeout_s: float = 120.0) -> Outcome:
    """Launch a federation of ``hospitals`` running the Flower app in ``app_dir`` (a
    folder with a ``pyproject.toml`` holding ``[tool.flwr.app]``), run it with
    ``run_config`` and tear everything down. See the module docstring for the modes.

    run_config: flat ``{key: str|int|float|bool}``; keys as declared in the app's
    ``[tool.flwr.app.config]`` (dashes, e.g. ``num-server-rounds``): ValueError else.
    on_log_line: called (in this thread) with each line of the run's log as it arrives;
    an exception it raises (KeyboardInterrupt too) ends the run, after teardown.
    kill_after: {hospital: seconds after submission} kills that SuperNode's process
    tree (deployment), to test a hospital vanishing mid-run.
    timeout_s: for the run itself (the run is stopped and ``status="timeout"``);
    startup_timeout_s: for the SuperLink and each SuperNode to come up (RuntimeError
    with the tail of the process's log).
    """
    if mode not in ("deployment", "simulation"):
        raise ValueError(f"mode {mode!r}: expected 'deployment' or 'simulation'")
    if not hospitals:
        raise ValueError("hospitals: expected at least one")
    for h in hospitals:
        _check_name(h.name)
    names = [h.name for h in hospitals]
    if len(set(names)) != len(names):
        raise ValueError(f"hospital names must be unique, got {names}")
    kill_after = dict(kill_after or {})
    if unknown := sorted(set(kill_after) - set(names)):
        raise ValueError(f"kill_after names unknown hospitals {unknown}")
    if mode == "simulation" and (kill_after or not all(h.register for h in hospitals)):
        raise ValueError("kill_after and register=False need mode='deployment'")
    app_dir, work_dir = Path(app_dir).resolve(), Path(work_dir).resolve()
    check_run_config(run_config, app_dir)
    if mode == "deployment":
        for h in hospitals:
            node_config_arg({"partition-id": 0, **h.node_config})  # validate early

    bin_dir = _flower_bin()
    fed = _prepare_dir(work_dir / "federation")
    env = _env(fed, bin_dir)
    log_path = fed / "run.log"
    log_path.touch()
    timings: dict[str, float] = {}
    sup = ProcessSupervisor(fed / "logs", env)
    cli = _Cli(bin_dir, env, sup)
    outcome: Outcome | None = None
    with _sigterm_raises():
        try:
            if mode == "deployment":
                _start_deployment(sup, cli, bin_dir, fed, hospitals, startup_timeout_s,
                                  timings)
            else:
                _start_simulation(sup, bin_dir, fed, startup_timeout_s, timings)

            t0 = time.monotonic()
            args = ["run", str(app_dir), CONNECTION, "--format", "json"]
            if run_config:
                rc_file = fed / "run_config.toml"
                rc_file.write_text(tomli_w.dumps(run_config))
                args += ["--run-config", str(rc_file)]
            if mode == "simulation":
                args += ["--federation-config",
                         f"num-supernodes={len(hospitals)} client-resources-num-cpus=1"]
            _, out = cli.run(*args, timeout=startup_timeout_s)
            res = _json(out)  # NB: `flwr run` exits 0 even when it failed
            timings["submit"] = time.monotonic() - t0
            if not res.get("success") or "run-id" not in res:
                outcome = Outcome(None, "refused",
                                  str(res.get("error-message") or out[-3000:]).strip(),
                                  log_path, timings=timings)
                return outcome
            run_id = int(res["run-id"])
            log.info("run %d submitted in %.1fs", run_id, timings["submit"])

            t1 = time.monotonic()
            status, details = _follow(sup, cli, run_id, hospitals, log_path,
                                      on_log_line, kill_after, timeout_s)
            timings["run"] = time.monotonic() - t1
            failed, refused = [], []
            if mode == "deployment":
                for h in hospitals:
                    name = _supernode_name(h)
                    rc = sup.returncode(name)
                    if rc is None:
                        continue
                    (refused if rc != 0 and REFUSED in sup.tail(name, 400)
                     else failed).append(h.name)
            outcome = Outcome(run_id, status, details, log_path, failed, refused, timings)
            return outcome
        finally:
            t2 = time.monotonic()
            survivors = sup.stop_all()
            timings["teardown"] = time.monotonic() - t2
            if survivors:
                log.warning("processes survived the teardown: %s", sorted(survivors))
            log.info("federation torn down in %.1fs", timings["teardown"])
