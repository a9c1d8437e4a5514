"""What a federation is given, checked before any process starts.

Flower reports a bad run config only once the run is submitted, and a bad
``--node-config`` only in a SuperNode's log; checking here turns both into a
ValueError that names the key, before anything has been started or written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

_SCALAR = (str, int, float, bool)


@dataclass
class Hospital:
    """One SuperNode. ``register=False`` starts it with a key the SuperLink does not
    know, so it must be refused (to test authentication)."""

    name: str
    node_config: dict[str, str | int | float | bool] = field(default_factory=dict)
    register: bool = True


def check_hospital_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name or ""):
        raise ValueError(f"hospital name {name!r}: expected letters, digits, '_', '.', '-' "
                         "(it names files and processes)")


def _flwr_app(app_dir: Path) -> dict:
    """The app's ``[tool.flwr.app]`` table."""
    pyproject = Path(app_dir) / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{pyproject}: cannot read the Flower app config ({err})") from err
    app = data.get("tool", {}).get("flwr", {}).get("app")
    if not isinstance(app, dict):
        raise ValueError(f"{pyproject}: no [tool.flwr.app] table; not a Flower app")
    return app


def client_app_ref(app_dir: Path) -> str:
    """The app's ClientApp, ``MODULE:ATTR`` (``[tool.flwr.app.components] clientapp``)."""
    return str(_flwr_app(app_dir).get("components", {}).get("clientapp", ""))


def app_config_keys(app_dir: Path) -> set[str]:
    """The run-config keys an app declares in ``[tool.flwr.app.config]``, flattened the
    way Flower does (``a.b`` for nested tables)."""
    app = _flwr_app(app_dir)

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
