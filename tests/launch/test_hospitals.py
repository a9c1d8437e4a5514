"""What the launcher prepares for the hospitals and the server from the data it decodes."""

from __future__ import annotations

import pytest
import torch

from src.config import compose_config
from src.data.federation import Federation, build_federation
from src.data.layouts import Sample
from src.data.synthetic import generate
from src.launch.hospitals import cache_front_end_features, hospital_nodes, hospital_policy
from src.models.features import features_file, raw_features
from src.models.initial import load_initial_model, save_initial_model


def test_the_pooled_test_features_are_the_hospitals_test_rows_in_the_pooled_order(tmp_path, monkeypatch):
    """The server's pooled test features are assembled from the hospitals' test features, not computed
    again, and equal what computing them would give, row for row."""
    generate(tmp_path / "archive", hospitals=2, images_per_hospital=20, seed=0)
    cfg = compose_config(["data=folder", f"data.root={tmp_path / 'archive'}", f"data.cache_dir={tmp_path / 'cache'}",
                          "data.image_size=32", f"reference.root={tmp_path / 'public'}", "reference.images=60",
                          "model.components=8"])
    federation = build_federation(cfg.data, 2, cfg.seed)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_initial_model(cfg, len(federation.classes), run_dir)
    computed_sets = []
    monkeypatch.setattr("src.launch.hospitals.raw_features",
                        lambda front_end, samples, *a: computed_sets.append(samples) or raw_features(front_end, samples, *a))
    cache_front_end_features(cfg, federation, run_dir)

    pooled = federation.select(split="test")
    assert pooled not in computed_sets and len(computed_sets) == 4  # each hospital's train and test sets
    front_end = load_initial_model(cfg, len(federation.classes), run_dir).front_end
    saved = torch.load(run_dir / "features" / features_file(front_end, pooled, cfg.data, run_dir).name,
                       weights_only=True)
    computed, labels = raw_features(front_end, pooled, cfg.data, None)
    assert len(pooled) > 0 and {s.hospital for s in pooled} == set(federation.hospitals)
    torch.testing.assert_close(saved["features"], computed)
    assert torch.equal(saved["labels"], labels)


@pytest.mark.parametrize("overrides, complete", [
    (["federation.num_hospitals=3"], True),
    (["federation.num_hospitals=20"], False),  # the default graph: 11 neighbours of 20
    (["federation.num_hospitals=20", "strategy.num_shares=20"], True),
    (["federation.num_hospitals=20", "strategy.num_shares=20", "hospital.complete_graph=true"], True),
    (["federation.num_hospitals=3", "strategy=fedavg"], False),
])
def test_hospitals_ask_for_a_complete_graph_when_the_run_has_one(overrides, complete):
    assert hospital_policy(compose_config(overrides))["complete-graph"] is complete


@pytest.mark.parametrize("overrides, cap", [([], 64), (["data.image_size=224"], 224),
                                            (["data.image_size=224", "hospital.max_image_size=512"], 512)])
def test_the_launchers_hospitals_accept_the_runs_own_image_size(overrides, cap):
    assert hospital_policy(compose_config(overrides))["max-image-size"] == cap


def test_a_complete_graph_the_run_does_not_have_is_refused_by_name():
    with pytest.raises(ValueError, match="strategy.num_shares=20"):
        hospital_policy(compose_config(["federation.num_hospitals=20", "hospital.complete_graph=true"]))


def test_each_hospital_is_told_to_reuse_the_images_the_launcher_decoded(tmp_path):
    """The launcher decodes every hospital's images into data.cache_dir; each hospital's node config names that
    cache as its own (the run config's is not read by a hospital)."""
    cfg = compose_config([f"data.cache_dir={tmp_path / 'cache'}"])
    samples = [Sample(str(tmp_path / f"{i}.dcm"), 0, f"hospital_{i % 2 + 1}", "train") for i in range(4)]
    federation = Federation(["normal", "bacterial", "viral"], ["hospital_1", "hospital_2"], samples)
    nodes = hospital_nodes(cfg, federation, tmp_path)
    assert [node.node_config["cache-dir"] for node in nodes] == [str(tmp_path / "cache")] * 2
