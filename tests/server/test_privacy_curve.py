"""The privacy–utility curve reads every run's results.json: ε spent against pooled AUC."""

from __future__ import annotations

import json

from src.server.privacy_curve import curve_points, main


def write_run(folder, privacy: dict, epsilons: list[dict], auc: float):
    folder.mkdir(parents=True)
    rounds = [{"round": i + 1, "hospitals": {h: ({"privacy": {"epsilon": e}} if e is not None else {})
                                             for h, e in eps.items()}} for i, eps in enumerate(epsilons)]
    (folder / "results.json").write_text(json.dumps({
        "config": {"privacy": privacy}, "rounds": rounds,
        "final": {"global": {"auc": auc, "accuracy": 0.5}}}))


def test_points_take_each_hospitals_last_epsilon_and_the_largest(tmp_path):
    # hospital_b vanished after round 1: its ε as of round 1 still counts
    write_run(tmp_path / "dp" / "0", {"name": "dp", "target_epsilon": 3.0},
              [{"a": 1.0, "b": 2.5}, {"a": 2.9}], auc=0.7)
    write_run(tmp_path / "dp" / "1", {"name": "dp", "target_epsilon": 8.0}, [{"a": 7.9, "b": 7.8}], auc=0.8)
    write_run(tmp_path / "none", {"name": "none"}, [{"a": None, "b": None}], auc=0.9)
    points = {p["run"]: p for p in curve_points([tmp_path])}
    assert points[str(tmp_path / "dp" / "0")]["epsilon"] == 2.9
    assert points[str(tmp_path / "dp" / "1")]["epsilon"] == 7.9
    assert points[str(tmp_path / "none")]["epsilon"] is None and not points[str(tmp_path / "none")]["private"]

    out = tmp_path / "docs" / "curve.png"
    main([str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 1000
    assert len(json.loads(out.with_suffix(".json").read_text())) == 3
