"""`python run_simulation.py launch=false`: a prepared run for Flower's own CLI, `flwr run .`.

run_simulation.py normally starts the SuperLink and SuperNodes itself (with TLS, SuperNode
authentication and a warm worker per hospital). A Flower user may rather drive the
federation with Flower's tools: this writes what `flwr run .` needs into the run
directory — the run config the apps read (`run_config.toml`) and a Flower home whose
`config.toml` names the SuperLink connection `fedcxr` — and returns the commands, for
Flower's simulation runtime or a local SuperLink with one SuperNode per hospital. They run
`flwr run .` in the run's copy of the app's own files (`stage_app`, as the launcher does).

Both SuperLinks run with `--disable-runtime-dependency-installation`: otherwise Flower
builds a fresh environment with every dependency (torch included) for each run.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pathspec
import tomli_w

from src.client.hospital import NODE_CONFIGS
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
    if mode == "simulation":  # the simulated hospitals' node configs (src/client/hospital.py)
        lines.append(f"export {NODE_CONFIGS}={q(str(run_dir / 'hospitals'))}")
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


def stage_app(app_dir: Path, parent: Path) -> Path:
    """A copy of the app's own files (hidden and `.gitignore`d folders left out) for `flwr run`,
    in `parent/app`.

    `flwr run <dir>` walks and resolves every file under `<dir>` before it filters them
    into the app bundle: in a checkout with its virtual environment and data that is
    ~80,000 files: a `flwr run` process took 8.1 s of CPU there, ~1.4 s on the copy. The copy
    holds only what the bundle can contain."""
    ignore = app_dir / ".gitignore"
    ignored = pathspec.GitIgnoreSpec.from_lines(ignore.read_text().splitlines() if ignore.exists() else [])
    staged = parent / "app"
    for folder, dirs, files in os.walk(app_dir):
        relative = Path(folder).relative_to(app_dir)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"
                   and not ignored.match_file(f"{(relative / d).as_posix()}/")]
        for name in files:
            source = Path(folder) / name
            if not name.startswith(".") and not source.is_symlink() and not ignored.match_file((relative / name).as_posix()):
                (staged / relative).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, staged / relative / name)
    return staged
