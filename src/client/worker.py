"""A hospital's warm worker: Flower's SuperExec, running every ClientApp task in this one process.

Flower's SuperExec (flwr 1.42) starts a fresh `flwr-clientapp` process for every message a
SuperNode receives. Each of those spends about 2 s of CPU importing Flower, and a train
handler then spends seconds more importing torch, Opacus and MONAI, all before a round's
milliseconds of work. With three hospitals on 2 cores and three exchanges per round under
secure aggregation, these starts were most of a round. Flower's executors are a subprocess
per task, or Kubernetes pods: its warm pools exist only for Kubernetes. So this module gives
Flower's own SuperExec loop (`run_superexec`) an executor that runs each task in this
process. It takes the same steps as `flwr-clientapp` (`flwr.supernode.runtime.run_clientapp`),
except those that end a process. Imports, the model registry and decoded data stay loaded
between messages.

The SuperNode starts this worker where it would start `flower-superexec`
(`src/launch/supernode.py`). It starts it again should a signal kill it, and the worker stops with
the SuperNode. The worker talks only to its own SuperNode's runtime API, on the hospital's
side of the trust boundary. If the worker dies during a task, the SuperNode answers that
message with Flower's "ClientApp crashed" error once the task's heartbeat stops. The
message is never run a second time, since a second run could spend the privacy budget
twice. A task that raises is answered with the error, as `flwr-clientapp` would answer it,
and the worker goes on.

With `--client-app MODULE:ATTR` (the launcher passes fedcxr's own, `src.client.app:app`)
every task runs that ClientApp, imported from the hospital's own installation, whatever app
the run's bundle (FAB) names: the bundle comes from the coordinator, and code it ships would
run on the hospital's side of the trust boundary, past every check the hospital's ClientApp
makes. The module is imported (and warmed up) while the federation starts. Without the
option the worker loads the bundle's app, as Flower does.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import importlib
import logging
import sys
import threading
import time

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.constant import TaskType
from flwr.supercore.cli import flower_superexec
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger(__name__)
PULL_BACKOFF_S = (0.05, 1.0)  # first retry, longest wait; Flower's are (1, 10) s
ACTIVE_POLL_S, ACTIVE_S = 0.05, 3.0  # as the SuperNode's (src/launch/supernode.py)


class _TaskPolls:
    """The `time` module as Flower's SuperExec loop sees it: for ACTIVE_S after a task it asks its
    SuperNode for the next one every ACTIVE_POLL_S (in a round it follows within a second or two),
    else every FLWR_SUPEREXEC_TASK_POLL_INTERVAL."""

    last_task = float("-inf")  # when the last task ended

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, ACTIVE_POLL_S) if time.monotonic() - self.last_task < ACTIVE_S else seconds)


class WarmExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that a ClientApp task runs here, now.

    The SuperNode hands out one message at a time, so running the task inside `launch`
    holds back nothing. With the hospital's own ClientApp named, no other task runs at all
    (an AgentApp, say: the SuperNode starts one when the server's run info asks for it,
    and Flower's runner would load the bundle's code), and a run's request to install its
    own dependencies is ignored. Without it, such tasks get Flower's subprocess launch."""

    def __init__(self, client_app: str | None) -> None:
        self.installed: set[str] = set()
        self.client_app = client_app

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if self.client_app and spec.task_type != TaskType.CLIENT_APP:
            log.error("task %d: refused a %s task: this hospital runs only its own ClientApp", spec.task_id,
                      spec.task_type)
            return LaunchResult.failed(f"this hospital runs only its own ClientApp ({self.client_app}), "
                                       f"not a {spec.task_type} task")
        if spec.task_type != TaskType.CLIENT_APP or (spec.runtime_dependency_install and not self.client_app):
            return super().launch(spec)
        start = time.perf_counter()
        status = self.run_task(spec)
        log.info("task %d: %s in %.2fs", spec.task_id, status, time.perf_counter() - start)
        _TaskPolls.last_task = time.monotonic()
        return LaunchResult.accepted()

    def app(self, run, fab):
        """The hospital's own ClientApp when it named one; otherwise the bundle's, installed once."""
        if self.client_app:
            log.info("run %d ships %s %s (FAB %s): running %s, this hospital's own", run.run_id, run.fab_id,
                     run.fab_version, fab.hash_str[:12], self.client_app)
            return installed_app(self.client_app)
        if fab.hash_str not in self.installed:
            install_from_fab(fab.content, skip_prompt=True)
            self.installed.add(fab.hash_str)
        return get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
            run.fab_id, run.fab_version, fab.hash_str)

    def run_task(self, spec: ExecutionSpec) -> str:
        """One message through the ClientApp; the reply and the node's context go back to the SuperNode."""
        retry = make_simple_http_retry_invoker()
        client = RuntimeHttpClient.from_server_address(
            server_address=spec.runtime_api_address, insecure=spec.insecure,
            root_certificates=validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(spec.token)],
            retry_invoker=retry)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            reply = self.app(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as e:  # answered as flwr-clientapp answers it; the worker stays up
            log.error("ClientApp raised an exception", exc_info=e)
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(e, LoadClientAppError) \
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(e)}:<'{e}'>"
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as e:
                log.error("could not push the reply", exc_info=e)
                status = SubStatus.FAILED
            # Stopped (and joined) before the output is pushed, unlike in flwr-clientapp: the push ends the
            # task's token, and a heartbeat sent after it is refused, which Flower answers with SIGINT to the
            # whole process. flwr-clientapp was ending anyway; this worker would stop for good, and the hospital
            # answer no later message (seen once: a round waited its full round_timeout for it).
            if heartbeat.is_running:
                heartbeat.stop()
            retry.max_tries = 1
            push_task_output(client=client, context=context, sub_status=status, details=details)
            client.close()
        return status


def preload(module: str) -> None:
    """Import `module` and run its `warm_up()` if it has one, while the federation starts."""
    start = time.perf_counter()
    warm_up = getattr(importlib.import_module(module), "warm_up", None)
    if warm_up is not None:
        warm_up()
    log.info("preloaded %s in %.1fs", module, time.perf_counter() - start)


def installed_app(ref: str):
    """The ClientApp at `MODULE:ATTR`, from this environment's installation."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr or "app")


def main() -> None:
    """`flower-superexec`'s command line, plus `--client-app MODULE:ATTR`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request: twenty polls a second
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --help stays Flower's
    parser.add_argument("--client-app", metavar="MODULE:ATTR")
    ours, flowers = parser.parse_known_args()
    atexit.register(gc.freeze)  # exit without the last collection's walk over torch's objects (~0.9 s of CPU)
    if ours.client_app:
        threading.Thread(target=preload, args=(ours.client_app.partition(":")[0],), daemon=True).start()
    superexec.get_executor = lambda *_, **__: WarmExecutor(ours.client_app)
    superexec.time = _TaskPolls()
    # The SuperNode hands out a task as soon as it has the message's metadata, while it is still
    # pulling the content from the SuperLink: a pull that finds it missing waits 1 s, then 2 s.
    run_clientapp.pull_and_inflate_object_from_tree = functools.partial(
        run_clientapp.pull_and_inflate_object_from_tree, initial_backoff=PULL_BACKOFF_S[0],
        backoff_cap=PULL_BACKOFF_S[1])
    sys.argv = ["flower-superexec", *flowers]
    flower_superexec()


if __name__ == "__main__":
    main()
