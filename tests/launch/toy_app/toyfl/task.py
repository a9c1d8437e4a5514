"""Linear regression y = x·w_true + noise, a different slice of data per hospital."""

from __future__ import annotations

import zlib

import numpy as np

DIM = 4
W_TRUE = np.arange(1, DIM + 1, dtype=np.float64)


def hospital_name(node_config, run_config) -> str:
    """The hospital this ClientApp serves: node config `hospital` (deployment) or the
    partition-id-th entry of run config `hospitals` (simulation)."""
    if "hospital" in node_config:
        return str(node_config["hospital"])
    names = [n for n in str(run_config.get("hospitals", "")).split(",") if n]
    pid = int(node_config["partition-id"])
    return names[pid] if pid < len(names) else f"partition-{pid}"


def load_data(name: str, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.normal(size=(n, DIM))
    return x, x @ W_TRUE + 0.01 * rng.normal(size=n)


def train(w: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int = 20,
          lr: float = 0.1) -> tuple[np.ndarray, float]:
    for _ in range(steps):
        w = w - lr * 2 * x.T @ (x @ w - y) / len(y)
    return w, float(np.mean((x @ w - y) ** 2))
