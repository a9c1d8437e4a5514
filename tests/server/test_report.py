"""The run's record and report: results.json's shape, plots and report.md."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from src.config import compose_config
from src.metrics import classification_metrics
from src.server.report import write_report
from src.server.results import RunRecord, unflatten

CLASSES = ["normal", "bacterial", "viral"]


def test_record_and_report(tmp_path):
    cfg = compose_config(["data.image_size=32", "seed=1", "federation.mode=simulation", "federation.rounds=2"])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    metrics = classification_metrics(labels, probs, CLASSES)
    hospital = {"num_examples": 40, "train_loss": 1.0, "auc": 0.7, "auc_per_class.normal": float("nan"),
                "confusion_matrix": list(range(9)), "num_test_examples": 10,
                "privacy": {"epsilon": 4.321, "delta": 1e-5, "noise_multiplier": 1.1, "sample_rate": 0.08,
                            "steps": 65, "accountant": "rdp"}}
    record = RunRecord(tmp_path, cfg, CLASSES)
    for r in (1, 2):
        record.add_round(r, metrics, {"hospitals": {"h1": hospital}, "time": {"train": 1.0, "total": 2.0}})
        saved = record.save({})
    write_report(tmp_path, saved, labels, probs)

    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["final"]["global"]["auc"] == metrics["auc"]
    assert results["final"]["hospitals"]["h1"]["auc_per_class"]["normal"] is None
    assert results["final"]["hospitals"]["h1"]["confusion_matrix"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    for png in ("metrics.png", "roc.png", "confusion.png"):
        assert Image.open(tmp_path / png).size[0] > 100
    report = (tmp_path / "report.md").read_text()
    assert f"{metrics['auc']:.3f}" in report and "| h1 |" in report
    assert "## Privacy" in report and "| h1 | 4.321 | 1e-05 | 1.100 | 0.0800 | 65 | rdp |" in report


def test_unflatten_restores_nested_metrics():
    flat = {"auc": 0.5, "sensitivity.normal": 1.0, "sensitivity.viral": float("nan"), "confusion_matrix": [1, 2, 3, 4]}
    out = unflatten(flat, ["normal", "viral"])
    assert out == {"auc": 0.5, "sensitivity": {"normal": 1.0, "viral": None}, "confusion_matrix": [[1, 2], [3, 4]]}


def test_a_round_is_evaluated_only_once_every_hospital_has_evaluated_it(tmp_path):
    """An interruption while the evaluations came in: a resumed run must ask the hospitals again."""
    record = RunRecord(tmp_path, compose_config(["federation.mode=simulation"]), CLASSES)
    trained = {"h1": {"num_examples": 40}, "h2": {"num_examples": 30}}
    record.add_round(1, {}, {"hospitals": trained, "time": {}})
    assert not record.evaluated(1) and not record.evaluated(2)
    record.add_evaluation(1, {"hospitals": {"h1": {"num_test_examples": 10}}})
    assert not record.evaluated(1)
    record.add_evaluation(1, {"hospitals": {"h2": {"num_test_examples": 8}}})
    assert record.evaluated(1)


def test_the_round_line_says_the_time_spent_and_left_at_the_same_pace():
    from src.server.results import progress_line

    entry = {"round": 3, "global": {"auc": 0.9}, "time": {"total": 10.0, "train": 8.0},
             "hospitals": {"h1": {"trained": True, "privacy": {"epsilon": 2.5}}, "h2": {"trained": False}}}
    line = progress_line(entry, rounds=5, elapsed=30.0, rounds_done=2)  # resumed at round 2: 15 s a round
    assert line.startswith("round 3/5  auc 0.900  hospitals 1/2  ε ≤ 2.50")
    assert line.endswith("elapsed 30s, ~30s left")
