"""A hospital's state survives Context.state as bytes (JSON, no pickle), at every stage."""

import json

import numpy as np
import pytest

from src.secagg import ClientSession
from src.secagg.identity import consortium
from tests.secagg.secagg_round import Federation, random_inputs

IDS = [1, 2, 3]


def round_trip(session):
    data = session.to_bytes()
    again = ClientSession.from_bytes(data)
    assert again.state == session.state and again.to_bytes() == data
    return json.loads(data)


def test_state_round_trips_at_every_stage():
    updates, weights = random_inputs(IDS, 16)
    fed = Federation(IDS, 16)
    s = ClientSession(2**64 - 1, server_round=7, threshold=2, clip_range=0.25, quant_bits=16, vector_length=16)
    assert round_trip(s)["stage"] == "new"
    fed.advertise()
    doc = round_trip(fed.session(1))
    assert doc["stage"] == "advertised" and doc["c_sk"] and doc["s_sk"] and doc["b"]
    fed.share_keys()
    doc = round_trip(fed.session(1))
    assert doc["b"] and [row[0] for row in doc["peers"]] == IDS and [row[0] for row in doc["shares"]] == [1]
    fed.masked_input(updates, weights)
    doc = round_trip(fed.session(1))
    assert doc["c_sk"] is doc["s_sk"] is doc["b"] is None  # secrets wiped once used
    assert [row[0] for row in doc["shares"]] == IDS
    fed.unmask()
    doc = round_trip(fed.session(1))
    assert doc["stage"] == "unmasked" and doc["revealed"] == [[1, "b"], [2, "b"], [3, "b"]]
    assert isinstance(fed.server.aggregate()[0], np.ndarray)


@pytest.mark.parametrize("data, match", [
    (b"\x80\x04pickle", "not JSON"),
    (b"[]", "format"),
    (b'{"format": "other"}', "format"),
])
def test_malformed_state_is_refused(data, match):
    with pytest.raises(ValueError, match=match):
        ClientSession.from_bytes(data)


@pytest.mark.parametrize("field, value, match", [
    ("stage", "done", "stage"),
    ("c_sk", "not base64!", "c_sk"),
    ("node_id", -1, "node_id"),
    ("threshold", True, "threshold"),
    ("shares", [[1, "AA=="]], "shares"),
    ("revealed", [[1, "both"]], "revealed"),
    ("view", {"participants": [1], "num_shares": 3, "sharing": [2]}, "view: graph view: hospitals sharing"),
])
def test_tampered_state_fields_are_refused(field, value, match):
    s = ClientSession(5, server_round=1, threshold=2, clip_range=1.0, quant_bits=8)
    s.advertise_keys(consortium(["hospital_5"])["hospital_5"])
    doc = json.loads(s.to_bytes()) | {field: value}
    with pytest.raises(ValueError, match=match):
        ClientSession.from_bytes(json.dumps(doc).encode())
