"""Run a Flower app as a whole federation on this machine, and always clean up.

``run_federation(app_dir, work_dir, hospitals, run_config, mode=...)``:

- ``mode="deployment"``: a ``flower-superlink`` and one ``flower-supernode`` per
  hospital, real OS processes on loopback, TLS on (a throw-away CA), SuperNode
  authentication on (each SuperNode's EC key registered through the Control API, the
  request ``flwr supernode register`` sends), runtime dependency installation off.
  Each SuperNode gets its hospital's ``node_config`` plus ``partition-id`` (its index
  in ``hospitals``) and ``num-partitions``.
- ``mode="simulation"``: Flower's simulation engine (``flower-superlink --simulation``)
  with ``num-supernodes=len(hospitals)``, ``simulation_cpus`` CPUs per Ray actor. A
  virtual node's node config only holds ``partition-id`` and ``num-partitions``: **the
  i-th hospital is partition-id i**, and the ServerApp/ClientApp must read whatever
  else they need about hospitals from the run config.

In both modes the run is submitted with ``flwr run <app_dir> --run-config <toml>``, its
log (``flwr log --stream``) goes line by line to ``on_log_line`` as it arrives and to
``Outcome.log_path``, and its end is read from the run's status (``flwr ls``'s request,
sent from this process); a ServerApp that dies ("Exit Code: ..." in its log) is
reported as failed within seconds. Every process is torn down whatever happens:
completion, failure, exception, Ctrl-C, SIGTERM.

Everything lives under ``work_dir/federation/``: ``certs/`` (CA, server certificate,
SuperNode keys), ``flwr_home/`` (``FLWR_HOME`` of every process: CLI connection
config, unpacked apps), ``logs/<process>.log``, ``run_config.toml``, ``run.log`` (the
run's log). The SuperLink keeps its state in memory (Flower's default ``--database``):
with a SQLite file it commits every message and every piece of a model to disk, which
made each exchange take seconds; and no masked update or message is left on the
coordinator's disk after the run.

Here: the arguments, the run's submission and the teardown. The steps live beside it:
``configs`` (argument checks), ``startup`` (processes up), ``flwr_cli`` (the ``flwr``
CLI), ``following`` (the run's log, to its end).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from src.launch.configs import Hospital, check_hospital_name, check_run_config, node_config_arg
from src.launch.flwr_cli import CONNECTION, FlwrCli, parse_json_output
from src.launch.flwr_run import stage_app
from src.launch.following import follow_run
from src.launch.processes import ProcessSupervisor
from src.launch.startup import (
    REFUSED,
    flower_bin,
    flower_env,
    installed_client_app,
    prepare_dir,
    start_deployment,
    start_simulation,
    supernode_name,
)

log = logging.getLogger(__name__)


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


def run_federation(app_dir: Path, work_dir: Path, hospitals: list[Hospital],
                   run_config: dict, mode: str = "deployment", timeout_s: float = 600,
                   on_log_line: Callable[[str], object] = print,
                   kill_after: dict[str, float] | None = None,
                   startup_timeout_s: float = 120.0, simulation_cpus: int = 1) -> Outcome:
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
    simulation_cpus: CPUs per Ray actor in simulation (capped at this machine's cores, or
    Ray would place no actor); each actor serves virtual nodes in turn, so one CPU each
    serves the most hospitals at once, more CPUs each start fewer actors.
    """
    if mode not in ("deployment", "simulation"):
        raise ValueError(f"mode {mode!r}: expected 'deployment' or 'simulation'")
    if not hospitals:
        raise ValueError("hospitals: expected at least one")
    for h in hospitals:
        check_hospital_name(h.name)
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

    bin_dir = flower_bin()
    fed = prepare_dir(work_dir / "federation")
    env = flower_env(fed, bin_dir)
    log_path = fed / "run.log"
    log_path.touch()
    timings: dict[str, float] = {}
    sup = ProcessSupervisor(fed / "logs", env)
    cli = FlwrCli(bin_dir, env, sup)
    outcome: Outcome | None = None
    with _sigterm_raises():
        try:
            if mode == "deployment":
                start_deployment(sup, bin_dir, fed, hospitals, startup_timeout_s,
                                 timings, installed_client_app(app_dir))
            else:
                start_simulation(sup, bin_dir, fed, startup_timeout_s, timings)

            t0 = time.monotonic()
            args = ["run", str(stage_app(app_dir, fed)), CONNECTION, "--format", "json"]
            if run_config:
                rc_file = fed / "run_config.toml"
                rc_file.write_text(tomli_w.dumps(run_config))
                args += ["--run-config", str(rc_file)]
            if mode == "simulation":
                cpus = min(simulation_cpus, os.cpu_count() or 1)
                args += ["--federation-config",
                         f"num-supernodes={len(hospitals)} client-resources-num-cpus={cpus}"]
            _, out = cli.run(*args, timeout=startup_timeout_s)
            res = parse_json_output(out)  # NB: `flwr run` exits 0 even when it failed
            timings["submit"] = time.monotonic() - t0
            if not res.get("success") or "run-id" not in res:
                outcome = Outcome(None, "refused",
                                  str(res.get("error-message") or out[-3000:]).strip(),
                                  log_path, timings=timings)
                return outcome
            run_id = int(res["run-id"])
            log.info("run %d submitted in %.1fs", run_id, timings["submit"])

            t1 = time.monotonic()
            status, details = follow_run(sup, cli, run_id, log_path, on_log_line,
                                         kill_after, timeout_s)
            timings["run"] = time.monotonic() - t1
            failed, refused = [], []
            if mode == "deployment":
                for h in hospitals:
                    name = supernode_name(h.name)
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
