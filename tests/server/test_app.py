"""The ServerApp around its round loop: what it saves, and when it stops."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch

from src.config import compose_config, to_run_config
from src.data.federation import build_federation
from src.data.synthetic import generate
from src.launch.hospitals import cache_front_end_features
from src.models.initial import save_initial_model
from src.server import app
from src.server.rounds import RoundFailed


def prepared_run(tmp_path, rounds: int):
    """A run directory as the launcher leaves it for the ServerApp: split, initial model, features."""
    generate(tmp_path / "archive", hospitals=2, images_per_hospital=20, seed=0)
    cfg = compose_config(["data=folder", f"data.root={tmp_path / 'archive'}", f"data.cache_dir={tmp_path / 'cache'}",
                          "data.image_size=32", f"reference.root={tmp_path / 'public'}", "reference.images=60",
                          "model.components=8", "logger=none", f"federation.rounds={rounds}"])
    federation = build_federation(cfg.data, 2, cfg.seed)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    federation.save(run_dir / "split.json")
    save_initial_model(cfg, len(federation.classes), run_dir)
    cache_front_end_features(cfg, federation, run_dir)
    return cfg, run_dir


def rounds_without_hospitals(asked: list[int]):
    """`run_rounds`' order of callbacks, with no hospitals: a round's answers bring their evaluation of the
    previous model (each hospital's test metrics), the last model's come after the loop."""

    def run_rounds(strategy, grid, arrays, rounds, *, on_round, on_evaluated, unevaluated=None, **_):
        def evaluated(server_round):
            strategy.rounds[server_round]["hospitals"] = {"hospital_1": {"num_test_examples": 12}}
            on_evaluated(server_round)

        pending = unevaluated
        for server_round in rounds:
            asked.append(server_round)  # the hospitals train (under DP, they spend budget)
            if pending is not None:
                evaluated(pending)
            strategy.rounds[server_round].update(started=time.perf_counter())
            on_round(server_round, arrays)
            pending = server_round
        if pending is not None:
            evaluated(pending)
        return arrays

    return run_rounds


def test_a_report_that_fails_stops_the_run_before_another_round_trains(tmp_path, monkeypatch):
    """Round 1's report is drawn in the background while round 2 trains; it fails. The run stops once
    round 2 is saved, before round 3 asks any hospital to train (and to spend privacy budget), and
    results.json says why."""
    cfg, run_dir = prepared_run(tmp_path, rounds=4)
    asked = []

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(app, "run_rounds", rounds_without_hospitals(asked))
    monkeypatch.setattr(app, "write_report", disk_full)
    with pytest.raises(RoundFailed, match="disk full"):
        app.main(SimpleNamespace(), SimpleNamespace(run_config=to_run_config(cfg, run_dir)))
    assert asked == [1, 2]
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert torch.load(run_dir / "model.pt", weights_only=False)["round"] == 2
    assert "the report could not be drawn (OSError: disk full); the rounds up to 2 are saved" in results["stopped"]


def test_the_last_report_that_fails_is_drawn_again_by_a_resumed_run(tmp_path, monkeypatch):
    cfg, run_dir = prepared_run(tmp_path, rounds=2)
    asked, drawn = [], []

    def last_fails(folder, saved, *args):
        drawn.append([r["round"] for r in saved["rounds"]])
        if len(drawn) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(app, "run_rounds", rounds_without_hospitals(asked))
    monkeypatch.setattr(app, "write_report", last_fails)
    with pytest.raises(RoundFailed, match="disk full"):
        app.main(SimpleNamespace(), SimpleNamespace(run_config=to_run_config(cfg, run_dir)))
    stopped = json.loads((run_dir / "results.json").read_text())
    assert "stopped" in stopped
    assert all(0 <= r["time"]["report_wait"] <= r["time"]["total"] for r in stopped["rounds"])  # waited, counted

    cfg.resume = str(run_dir)
    app.main(SimpleNamespace(), SimpleNamespace(run_config=to_run_config(cfg, run_dir)))
    assert asked == [1, 2] and drawn == [[1], [1, 2], [1, 2]]  # no round trained again; the last report drawn
    assert "stopped" not in json.loads((run_dir / "results.json").read_text())
