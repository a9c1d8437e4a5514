"""The ``flwr`` command-line client, as the launcher calls it.

Submitting the run (``flwr run``), streaming its log (``flwr log``) and stopping it
(``flwr stop``) go through one wrapper, so that every CLI process is one the teardown
knows about. The one-request questions (a run's status, registering a SuperNode) are
sent from the launcher's process instead (src/launch/control.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from src.launch.processes import ProcessSupervisor

CONNECTION = "fedcxr"              # name of the SuperLink connection in config.toml


def parse_json_output(text: str) -> dict:
    """The JSON object a `flwr ... --format json` prints (after other chatter)."""
    for match in re.finditer(r"^\{", text, re.M):
        try:
            return json.loads(text[match.start():])
        except json.JSONDecodeError:
            continue
    return {}


class FlwrCli:
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
