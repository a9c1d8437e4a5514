"""The value-of-federation baselines: centralized and local-only models on a real (tiny) synthetic split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from src.baselines import baselines_markdown, run_baselines
from src.config import compose_config
from src.data.check import decode_all
from src.data.federation import Federation, build_federation

HEADLINE = ("auc", "accuracy", "balanced_accuracy", "mcc")


def make_cfg(tmp, *overrides: str):
    return compose_config([
        f"data.root={tmp / 'synthetic'}", f"data.cache_dir={tmp / 'cache'}", "data.images_per_hospital=40",
        f"reference.root={tmp / 'public'}", "reference.images=90",  # not the repository's data/ folder
        "data.image_size=32", "federation.num_hospitals=2", "federation.rounds=1", "federation.local_epochs=1",
        "device=cpu", "baselines=true", *overrides,
    ])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run directory with split.json, written as run_simulation.py's prepare_hospitals writes it."""
    tmp = tmp_path_factory.mktemp("baselines")
    cfg = make_cfg(tmp)
    federation = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed), cfg.data)
    run_dir = tmp / "run"
    run_dir.mkdir()
    federation.save(run_dir / "split.json")
    return cfg, run_dir, tmp


@pytest.fixture(scope="module")
def baselines(prepared):
    cfg, run_dir, _ = prepared
    return run_baselines(cfg, run_dir)


def check_metrics(m: dict, labels: list[int], n_classes: int) -> None:
    """Metrics of exactly these test images: counts, confusion matrix and headline values agree."""
    cm = np.array(m["confusion_matrix"])
    assert m["num_examples"] == len(labels) == cm.sum()
    assert cm.shape == (n_classes, n_classes)
    assert list(cm.sum(axis=1)) == [labels.count(k) for k in range(n_classes)]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    for key in HEADLINE:
        assert m[key] is None or (-1.0 if key == "mcc" else 0.0) <= m[key] <= 1.0


def test_baselines_json_has_every_model_evaluated_on_the_right_test_sets(prepared, baselines):
    cfg, run_dir, _ = prepared
    out = baselines
    federation = Federation.load(run_dir / "split.json")
    k = len(federation.classes)
    assert json.loads((run_dir / "baselines.json").read_text()) == out
    assert set(out) == {"budget_epochs", "centralized", "local"}
    assert out["budget_epochs"] == cfg.federation.rounds * cfg.federation.local_epochs == 1
    pooled = [s.label for s in federation.select(split="test")]
    own = {h: [s.label for s in federation.select(h, "test")] for h in federation.hospitals}
    assert len(pooled) == sum(map(len, own.values())) > 0
    assert set(out["centralized"]) == {"pooled"}
    check_metrics(out["centralized"]["pooled"], pooled, k)
    assert set(out["local"]) == set(federation.hospitals) == {"hospital_1", "hospital_2"}
    for hospital, local in out["local"].items():
        assert set(local) == {"own", "pooled"}
        check_metrics(local["own"], own[hospital], k)
        check_metrics(local["pooled"], pooled, k)


def test_private_baselines_draw_fresh_noise_under_the_same_seed(prepared, baselines):
    """The seed fixes the split, the initial weights and the augmentation; DP noise is never seeded."""
    cfg, run_dir, tmp = prepared
    assert cfg.privacy.name == "dp"
    again = tmp / "again"
    again.mkdir(exist_ok=True)
    shutil.copy(run_dir / "split.json", again / "split.json")
    second = run_baselines(cfg, again)
    assert second["budget_epochs"] == baselines["budget_epochs"]
    assert second["centralized"]["pooled"]["num_examples"] == baselines["centralized"]["pooled"]["num_examples"]
    assert second != baselines


def test_markdown_puts_federated_centralized_and_local_models_side_by_side(baselines):
    out = baselines
    g = {"num_examples": 16, "auc": 0.812345, "accuracy": 0.5, "balanced_accuracy": None, "mcc": -0.25}
    results = {"final": {"global": g, "hospitals": {
        "hospital_1": {"num_examples": 28, "num_test_examples": 8, "auc": 0.9, "accuracy": 0.75,
                       "balanced_accuracy": 0.7, "mcc": 0.4}}}}
    md = baselines_markdown(results, out)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert rows[0] == "| federated (global) | pooled | 16 | 0.812 | 0.500 | – | -0.250 |"
    assert rows[1].startswith("| centralized | pooled | ")
    for hospital in ("hospital_1", "hospital_2"):
        assert any(r.startswith(f"| local-only {hospital} | pooled | ") for r in rows)
        assert any(r.startswith(f"| local-only {hospital} | {hospital} | ") for r in rows)
    assert "| federated (global) | hospital_1 | 8 | 0.900 | 0.750 | 0.700 | 0.400 |" in rows
    assert len(rows) == 2 + 2 * 2 + 1  # hospital_2 has no federated evaluation in these results
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert all(key in header for key in HEADLINE)
    for row in rows:
        assert row.count("|") == header.count("|")
    assert "1 epoch " in md
