"""wandb from the ServerApp: offline by default, never prompting without a key."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from src.server.dashboard import Dashboard


def entry():
    return {"round": 1, "global": {"auc": 0.8, "accuracy": 0.7, "auc_per_class": {"a": 0.8}},
            "hospitals": {"h1": {"auc": 0.75, "num_examples": 10}}, "time": {"total": 3.0}}


def logger_cfg(mode):
    return OmegaConf.create({"logger": {"name": "wandb", "mode": mode, "project": "fedcxr-test", "entity": None},
                             "seed": 0})


def test_offline_run_is_written_to_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    dashboard = Dashboard(logger_cfg("online"), tmp_path, ["a", "b"])  # no key: falls back to offline
    assert dashboard.run.settings.mode == "offline"
    dashboard.log_round(entry(), rng.integers(0, 2, 20), rng.dirichlet(np.ones(2), 20))
    dashboard.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_logger_none_starts_nothing(tmp_path):
    dashboard = Dashboard(OmegaConf.create({"logger": {"name": "none"}}), tmp_path, ["a"])
    assert dashboard.run is None
    dashboard.log_round(entry(), None, None)
    dashboard.finish()
