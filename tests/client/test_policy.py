"""A hospital's own privacy policy against a server's run config: no ε cap chosen, or DP switched off."""

from __future__ import annotations

import json
import math

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


@pytest.mark.parametrize("crafted", [
    {"data": "${oc.create:${server_data}}"},  # a fresh node at every read: the hospital's own cache_dir would not stick
    {"privacy": {"name": "${oc.env:HOSPITAL_SECRET}"}},  # the hospital's environment, echoed in a declined reason
])
def test_a_run_config_with_an_interpolation_is_refused(hospital, monkeypatch, crafted):
    """OmegaConf resolves `${...}` where a key is read: at the hospital, on the server's behalf."""
    from omegaconf import OmegaConf

    from src.client.app import run_config

    monkeypatch.setenv("HOSPITAL_SECRET", "hunter2")
    cfg = compose_config([])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["server_data"] = dict(config["data"], cache_dir="/srv/shared/server-chosen")
    for key, value in crafted.items():
        config[key] = value if isinstance(value, str) else dict(config[key], **value)
    context = Context(run_id=1, node_id=7, state=RecordDict(), node_config={
        "hospital": "hospital_1", "manifest": str(hospital / "hospital_1.json")},
        run_config={"config": json.dumps(config), "run-dir": str(hospital)})
    with pytest.raises(ValueError, match="the run config holds an interpolation"):
        run_config(context)


def test_a_hospital_without_its_initial_model_builds_none_and_tells_the_server_nothing(hospital, caplog):
    """Without the file its node config names, the hospital would fit the front end on the reference set the
    server names (its own archive, say) and write there; it refuses instead, and the server gets a fixed reason
    (an exception's text can name a patient's file)."""
    from src.client.app import HospitalError

    cfg = compose_config(["strategy=fedavg", "privacy=none", f"reference.root={hospital / 'server-chosen'}"])
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=to_run_config(cfg, hospital),
                      node_config={"hospital": "hospital_1", "manifest": str(hospital / "hospital_1.json"),
                                   "require-secure-aggregation": False, "max-epsilon": math.inf,
                                   "initial-model": str(hospital / "missing.pt")})
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")
    with pytest.raises(HospitalError) as refused:
        train_round(msg, context)
    assert str(refused.value) == "the hospital could not answer; the reason stays in its own log"
    assert "missing.pt: no such file" in caplog.text  # the reason, in the hospital's own log
    assert not (hospital / "server-chosen").exists()


def test_a_run_config_that_is_not_a_json_object_is_refused(hospital):
    """A JSON string would reach OmegaConf as YAML, whose escapes spell an interpolation without `${` in the text."""
    from src.client.app import run_config

    context = Context(run_id=1, node_id=7, state=RecordDict(), node_config={
        "hospital": "hospital_1", "manifest": str(hospital / "hospital_1.json")},
        run_config={"config": json.dumps('privacy: {name: "\\x24{oc.env:HOME}"}'), "run-dir": str(hospital)})
    with pytest.raises(ValueError, match="expected a JSON object, got str"):
        run_config(context)


def test_a_node_config_without_a_manifest_never_takes_the_run_configs_folder(hospital, monkeypatch):
    """Simulation's stand-in node configs are found through the hospital's process environment, not through the
    run config's run-dir (the server's word: there it could name the policy, identity and records)."""
    from src.client.hospital import NODE_CONFIGS, node_settings

    monkeypatch.delenv(NODE_CONFIGS, raising=False)
    context = Context(run_id=1, node_id=7, state=RecordDict(), node_config={"partition-id": 0},
                      run_config={"config": "{}", "run-dir": str(hospital)})
    with pytest.raises(ValueError, match="names no manifest"):
        node_settings(context)
    (hospital / "split.json").write_text((hospital / "hospital_1.json").read_text())
    (hospital / "hospitals").mkdir()
    stand_in = {"hospital": "hospital_1", "manifest": "m"}
    (hospital / "hospitals" / "hospital_1.node.json").write_text(json.dumps(stand_in))
    monkeypatch.setenv(NODE_CONFIGS, str(hospital / "hospitals"))
    assert node_settings(context) == stand_in


@pytest.mark.parametrize("cap, image_size, refused", [(None, 2048, True), (None, 1024, False), (4096, 2048, False), ("inf", 4096, False),
                                                       (128, 256, True)])
def test_a_hospital_decodes_its_images_at_no_size_above_its_own_cap(hospital, cap, image_size, refused):
    """Every image is decoded and cached at data.image_size on the hospital's disk: the server does not choose
    how much of it fills. A train message is declined before anything is read, an evaluate message refused
    with the policy's reason (not the fixed one an unexpected failure gets)."""
    from src.client.app import PolicyRefusal, evaluate_model

    cfg = compose_config(["strategy=fedavg", f"data.image_size={image_size}"])
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=to_run_config(cfg, hospital),
                      node_config={"hospital": "hospital_1", "manifest": str(hospital / "hospital_1.json"),
                                   "require-secure-aggregation": False, "max-epsilon": 8.0}
                      | ({"max-image-size": cap} if cap else {}))
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")
    reason = f"hospital.max_image_size={cap or 1024}: refusing data.image_size={image_size}"
    if refused:
        assert reason in train_round(msg, context).content["hospital"]["declined"]
        with pytest.raises(PolicyRefusal, match=reason):
            evaluate_model(Message(RecordDict(), dst_node_id=7, message_type="evaluate"), context)
        assert not (hospital / "cache").exists() and not (hospital / "hospital_1.privacy.json").exists()
    else:  # past the size check: the next step needs the initial model this fixture does not have
        with pytest.raises(Exception, match="could not answer"):
            train_round(msg, context)
