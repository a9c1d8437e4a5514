"""`python run_simulation.py launch=false`: a prepared run for Flower's own CLI, `flwr run .`.

run_simulation.py normally starts the SuperLink and SuperNodes itself (with TLS, SuperNode
authentication and a warm worker per hospital). A Flower user may rather drive the
federation with Flower's tools: this writes what `flwr run .` needs into the run
directory — the run config the apps read (`run_config.toml`) and a Flower home whose
`config.toml` names the SuperLink connection `fedcxr` — and returns the commands, for
Flower's simulation runtime or a local SuperLink with one SuperNode per hospital. They run
`flwr run .` in the run's copy of the app (`startup.stage_app`): in the checkout itself,
Flower would walk its virtual environment's files before bundling the app (~8 s of CPU).

Both SuperLinks run with `--disable-runtime-dependency-installation`: otherwise Flower
builds a fresh environment with every dependency (torch included) for each run.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import tomli_w

from src.launch.configs import Hospital, node_config_arg

CONNECTION = "fedcxr"
PORT = 9093             # the SuperLink's HTTP API (Fleet and Control), on loopback
CLIENTAPPIO_PORT = 9101  # each SuperNode's ClientAppIo API: this port + its index


def write_flwr_files(run_dir: Path, run_config: dict, port: int = PORT) -> tuple[Path, Path]:
    """`run_config.toml` and `flwr_home/config.toml` (connection `fedcxr`, loopback, no TLS) in `run_dir`."""
    run_config_file = run_dir / "run_config.toml"
    run_config_file.write_text(tomli_w.dumps(run_config))
    home = run_dir / "flwr_home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": CONNECTION, CONNECTION: {"address": f"127.0.0.1:{port}", "insecure": True}}}))
    return run_config_file, home


def commands(app_dir: Path, run_dir: Path, hospitals: list[Hospital], mode: str, port: int = PORT) -> list[str]:
    """The shell commands that run the prepared run with Flower's CLI (after `write_flwr_files`)."""
    q = shlex.quote
    superlink = f"flower-superlink --insecure --disable-runtime-dependency-installation --port {port}"
    lines = [f"cd {q(str(app_dir))}", f"export FLWR_HOME={q(str(run_dir / 'flwr_home'))}"]
    submit = f"flwr run . {CONNECTION} --run-config {q(str(run_dir / 'run_config.toml'))} --stream"
    if mode == "simulation":
        lines += [f"{superlink} --simulation &",
                  f"{submit} --federation-config {q(f'num-supernodes={len(hospitals)}')}"]
    else:
        lines.append(f"{superlink} &")
        lines += [f"flower-supernode --insecure --superlink 127.0.0.1:{port} --port {CLIENTAPPIO_PORT + i} "
                  f"--node-config {q(node_config_arg(h.node_config))} &  # {h.name}"
                  for i, h in enumerate(hospitals)]
        lines.append(submit)
    return lines
