"""The hospital's side of `strategy=secagg` (`src/secagg/`, schedule in `src/strategies/secure.py`).

The train handler masks the update right after training (`contribute`) and answers
with the masked vector and fresh public keys for the next round; the plain update
never leaves the handler. Every round key it advertises is signed with the hospital's
identity key, every neighbour's is verified against the consortium roster, and the
hospital's own policy (`src/client/hospital.py`) bounds the threshold and the
survivors it accepts, whatever the server sends. Between messages each round's session (private keys, the
shares it holds) waits in the Flower Context.state on the hospital's own SuperNode; the
last round it masked an update for, in each run, is kept on its disk beside its manifest
(`<hospital>.secagg.json`), so that a restarted SuperNode still refuses to mask a round again.
The stage handlers import neither torch nor MONAI: without a warm worker Flower starts
a fresh process for every message, and the stages need only numpy and `cryptography`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from src.client.hospital import identity, manifest, node_settings, policy
from src.secagg import ClientSession, SecAggError
from src.secagg.records import keys_record, peers_keys, peers_view

PREFIX = "secagg-session."


def setup(msg: Message, context: Context, hospital: str) -> Message:
    """`train.secagg_setup`: stage 1 of a round whose keys were not shared during the previous one."""
    return Message(RecordDict({"keys": _advertise(msg, context, msg.content["secagg"]),
                               "hospital": ConfigRecord({"name": hospital})}), reply_to=msg)


def share_keys(msg: Message, context: Context) -> Message:
    """`train.secagg_share`: stage 2 — encrypted shares of this hospital's secrets for its neighbours."""
    return Message(RecordDict({"shares": _share(msg, context, msg.content["peers"])}), reply_to=msg)


def consistency(msg: Message, context: Context) -> Message:
    """`train.secagg_consistency`: sign the survivor list (Bonawitz et al.'s consistency check)."""
    ask = msg.content["consistency"]
    session = _load(msg, context, int(ask["round"]))
    signature = session.sign_survivors(list(ask["survivors"]), identity(context))
    _store(context, session)
    return Message(RecordDict({"consistency": ConfigRecord({"signature": signature})}), reply_to=msg)


def check_ready(msg: Message, context: Context) -> None:
    """Before training: this round's keys are shared and enough neighbours shared theirs, and the round
    comes after every round it masked an update for."""
    server_round = int(msg.content["secagg"]["server_round"])
    _refuse_masked(msg, context, server_round, "mask an update for")
    _load(msg, context, server_round).check_senders([int(n) for n in msg.content["secagg-shares"]["from"]])


def contribute(msg: Message, context: Context, update: np.ndarray, num_examples: int) -> dict:
    """In the train reply: the masked update (stage 3) and public keys for the next round (its stage 1)."""
    session = _load(msg, context, int(msg.content["secagg"]["server_round"]))
    _refuse_masked(msg, context, session.state.round, "mask an update for")  # again: the caller holds the ledger lock
    shares = msg.content["secagg-shares"]
    masked = session.masked_input(dict(zip(shares["from"], shares["ciphertexts"])), update, num_examples)
    _record_masked(context, msg.metadata.run_id, session.state.round)  # before the masked update leaves
    _store(context, session)
    return {"secagg-masked": ArrayRecord([masked])} | next_keys(msg, context)


def decline(msg: Message, context: Context) -> dict:
    """In a declined train reply: no masked update (this round's secrets are forgotten), the next round's keys."""
    context.state.pop(PREFIX + str(int(msg.content["secagg"]["server_round"])), None)
    return next_keys(msg, context)


def next_keys(msg: Message, context: Context) -> dict:
    if "secagg-next" not in msg.content:
        return {}
    return {"secagg-next": _advertise(msg, context, msg.content["secagg-next"])}


def unmask(msg: Message, context: Context) -> Message:
    """`train.secagg_unmask`: stage 4 of this round (the shares that unmask the sum), stage 2 of the next."""
    reply = RecordDict()
    if "unmask" in msg.content:
        ask = msg.content["unmask"]
        session = _load(msg, context, int(ask["round"]))
        signatures = dict(zip(ask["signers"], ask["signatures"]))
        b, sk = session.unmask(list(ask["survivors"]), list(ask["dropped"]), signatures, identity(context))
        del context.state[PREFIX + str(session.state.round)]  # the round is over for this hospital
        reply["b"] = ConfigRecord({"nodes": list(b), "shares": list(b.values())})
        reply["sk"] = ConfigRecord({"nodes": list(sk), "shares": list(sk.values())})
    if "peers" in msg.content:
        reply["shares"] = _share(msg, context, msg.content["peers"])
    return Message(reply, reply_to=msg)


def _advertise(msg: Message, context: Context, settings: ConfigRecord) -> ConfigRecord:
    """A fresh session for the round in `settings`, checked against this hospital's policy; sessions of
    rounds before the previous one are dropped.

    Never for a round it already masked an update for: a second session of that round would sign a
    second survivor list with fresh keys, and a server that shows each neighbour the session it
    wants could have the hospital's signature counted on two lists: with 3 or 5 hospitals, none
    colluding, that rebuilt one hospital's update (tests/strategies/test_lying_server.py checks
    the refusal)."""
    if msg.metadata.dst_node_id != context.node_id:
        raise SecAggError(f"a message for node {msg.metadata.dst_node_id} reached node {context.node_id}")
    _refuse_masked(msg, context, int(settings["server_round"]), "start")
    rules = policy(context)
    session = ClientSession(context.node_id, **dict(settings), run_id=msg.metadata.run_id,
                            min_threshold=rules.min_threshold, min_survivors=rules.min_survivors,
                            complete_graph=rules.complete_graph)
    keys = session.advertise_keys(identity(context))
    for key in [k for k in context.state if k.startswith(PREFIX) and int(k[len(PREFIX):]) < session.state.round - 1]:
        del context.state[key]
    _store(context, session)
    return keys_record(keys)


def _share(msg: Message, context: Context, peers: ConfigRecord) -> ConfigRecord:
    session = _load(msg, context, int(peers["round"]))
    try:
        view = peers_view(peers)
    except (KeyError, TypeError, ValueError) as err:
        raise SecAggError(f"refusing round {int(peers['round'])}: no well-formed graph with the keys ({err})") from None
    ciphertexts = session.share_keys(peers_keys(peers), identity(context), view)
    _store(context, session)
    return ConfigRecord({"to": list(ciphertexts), "ciphertexts": list(ciphertexts.values())})


def masked_rounds(context: Context) -> Path:
    """The hospital's record of the last round it masked an update for, per run: on its own disk, not in the
    SuperNode's memory, which a restart empties (and a restarted SuperNode could be asked to mask a round again)."""
    return manifest(context).with_name(f"{node_settings(context)['hospital']}.secagg.json")


def _refuse_masked(msg: Message, context: Context, server_round: int, what: str) -> None:
    """Rounds go forward: none at or before the last one this hospital masked an update for, in this run."""
    path = masked_rounds(context)
    record = json.loads(path.read_text()) if path.exists() else {}
    if not (isinstance(record, dict) and all(type(last) is int for last in record.values())):
        raise SecAggError(f"refusing secure-aggregation round {server_round}: this hospital cannot read its "
                          "record of masked rounds")  # a record it cannot read refuses every round
    masked = record.get(str(msg.metadata.run_id))
    if masked is not None and server_round <= masked:
        raise SecAggError(f"refusing to {what} secure-aggregation round {server_round} of run {msg.metadata.run_id}: "
                          f"this hospital already sent a masked update for round {masked}")


def _record_masked(context: Context, run_id: int, server_round: int) -> None:
    path = masked_rounds(context)
    rounds = json.loads(path.read_text()) if path.exists() else {}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rounds | {str(run_id): server_round}))
    tmp.replace(path)  # atomically: a crash leaves the old record or the new one


def _store(context: Context, session: ClientSession) -> None:
    context.state[PREFIX + str(session.state.round)] = ConfigRecord({"state": session.to_bytes()})


def _load(msg: Message, context: Context, server_round: int) -> ClientSession:
    """This round's session, if it belongs to the message's run (Flower keeps Context.state across the runs of
    a series)."""
    key = PREFIX + str(server_round)
    if key not in context.state:
        raise SecAggError(f"no secure-aggregation keys for round {server_round} on this hospital")
    session = ClientSession.from_bytes(context.state[key]["state"])
    if session.state.run_id != msg.metadata.run_id:
        raise SecAggError(f"the secure-aggregation session of round {server_round} belongs to run "
                          f"{session.state.run_id}, not to run {msg.metadata.run_id}")
    return session
