"""The SuperLink's Control API from the launcher's own process, for its one-request questions.

`flwr ls` and `flwr supernode register` each start a Python process (~1.5 s of CPU, ~2 s
on two busy cores) to send a single request, and the launcher asked them at every run's
end and for every hospital. It sends those requests itself, through the client those
commands build (`flwr.cli.utils.init_http_client_from_connection`) from the federation's
own ``FLWR_HOME``: the same request, the same TLS, an answer in milliseconds. `flwr run`
and `flwr log --stream` stay CLI processes (long-lived, and what a user would type).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.cli.utils import init_http_client_from_connection
from flwr.proto.control_pb2 import ListRunsRequest, RegisterNodeRequest  # pylint: disable=E0611
from flwr.supercore.control import ControlHttpClient

from src.launch.flwr_cli import CONNECTION

logging.getLogger("httpx").setLevel(logging.WARNING)  # an INFO line per request otherwise


@contextlib.contextmanager
def control_client(env: dict[str, str]) -> Iterator[ControlHttpClient]:
    """A Control API client for the federation whose processes run with `env` (its ``FLWR_HOME``)."""
    previous = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = env["FLWR_HOME"]  # where Flower reads the connection and credentials
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "Using SuperLink: ..." line is for a terminal
            client = init_http_client_from_connection(read_superlink_connection(CONNECTION))
    finally:
        if previous is None:
            del os.environ["FLWR_HOME"]
        else:
            os.environ["FLWR_HOME"] = previous
    try:
        yield client
    finally:
        client.close()


def run_status(client: ControlHttpClient, run_id: int) -> tuple[str, str]:
    """(status, details) as `flwr ls` prints them: e.g. ("finished:completed", "")."""
    run = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
    status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
    return status, "" if run.status.details in ("", "N/A") else run.status.details


def register_node(client: ControlHttpClient, public_key: Path, name: str) -> int:
    """Register a SuperNode's public key (what `flwr supernode register` does); returns its node id."""
    node_id = client.RegisterNode(RegisterNodeRequest(public_key=try_load_public_key(public_key), name=name)).node_id
    if not node_id:
        raise RuntimeError(f"the SuperLink did not register SuperNode {name}")
    return node_id
