"""A hospital's own privacy policy against a server's run config: no ε cap chosen, or DP switched off."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from src.client.app import train_round
from src.config import compose_config, to_run_config
from src.data.federation import Federation
from src.data.layouts import Sample


@pytest.fixture()
def hospital(tmp_path):
    """A one-hospital manifest (files that need not exist: the hospital declines before reading any)."""
    samples = [Sample(str(tmp_path / f"{i}.dcm"), i % 3, "hospital_1", "train" if i < 6 else "test") for i in range(9)]
    Federation(["normal", "bacterial", "viral"], ["hospital_1"], samples).save(tmp_path / "hospital_1.json")
    return tmp_path


@pytest.mark.parametrize("policy, overrides, reason", [
    ({}, [], "sets no max-epsilon; it trains only under an ε cap it chose"),
    ({"max-epsilon": 8.0}, ["privacy=none"], "hospital.max_epsilon=8.0: refusing to train without differential "
                                             "privacy (privacy=none)"),
])
def test_a_hospital_trains_only_under_the_privacy_it_chose(hospital, policy, overrides, reason):
    cfg = compose_config(["strategy=fedavg", *overrides])
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=to_run_config(cfg, hospital),
                      node_config={"hospital": "hospital_1", "manifest": str(hospital / "hospital_1.json"),
                                   "require-secure-aggregation": False, **policy})
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")
    reply = train_round(msg, context)
    assert reason in reply.content["hospital"]["declined"]
    assert "arrays" not in reply.content and not (hospital / "hospital_1.privacy.json").exists()


@pytest.mark.parametrize("own", [True, False])
def test_the_server_does_not_choose_where_a_hospital_caches_its_decoded_images(hospital, own):
    """A run config's data.cache_dir would have the hospital write decoded patient images wherever the server
    names: the hospital's own node config says where (or a folder beside its manifest)."""
    from src.client.app import run_config

    cfg = compose_config(["data.cache_dir=/srv/shared/server-chosen"])
    settings = {"hospital": "hospital_1", "manifest": str(hospital / "hospital_1.json")}
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=to_run_config(cfg, hospital),
                      node_config=settings | ({"cache-dir": str(hospital / "own-cache")} if own else {}))
    assert run_config(context).data.cache_dir == str(hospital / ("own-cache" if own else "cache"))
