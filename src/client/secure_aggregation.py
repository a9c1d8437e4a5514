"""The hospital's side of `strategy=secagg`: one handler per protocol stage (`src/strategies/secagg/`).

After training, the hospital keeps its update Δ = trained − global in its Flower
Context.state (on its own SuperNode) and answers with public keys only; the stage
handlers then share keys, send the masked update, and reveal the shares needed to
unmask the sum. These handlers import neither torch nor MONAI: Flower starts a fresh
process for every message, and the stages need only numpy and `cryptography`.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from src.strategies.secagg import ClientSession

SESSION, UPDATE = "secagg-session", "secagg-update"


def advertise(msg: Message, context: Context, update: np.ndarray, num_examples: int) -> ConfigRecord:
    """Stage 1, at the end of training: keep the update and the session, answer with public keys."""
    config = {k.removeprefix("secagg."): v for k, v in msg.content["secagg"].items()}
    session = ClientSession(msg.metadata.dst_node_id, **config)
    c_pk, s_pk = session.advertise_keys()
    context.state[UPDATE] = ArrayRecord([update.astype(np.float64)])
    _keep(context, session, num_examples)
    return ConfigRecord({"c_pk": c_pk, "s_pk": s_pk})


def share_keys(msg: Message, context: Context) -> Message:
    session, n = _session(context)
    peers = msg.content["peers"]
    ciphertexts = session.share_keys({node: (c, s) for node, c, s in zip(peers["nodes"], peers["c_pk"], peers["s_pk"])})
    _keep(context, session, n)
    return Message(RecordDict({"shares": ConfigRecord({"to": list(ciphertexts), "ciphertexts": list(ciphertexts.values())})}),
                   reply_to=msg)


def masked_input(msg: Message, context: Context) -> Message:
    session, n = _session(context)
    shares = msg.content["shares"]
    update = next(iter(context.state[UPDATE].values())).numpy()
    masked = session.masked_input(dict(zip(shares["from"], shares["ciphertexts"])), update, n)
    del context.state[UPDATE]  # masked and sent: the plain update is no longer needed
    _keep(context, session, n)
    return Message(RecordDict({"masked": ArrayRecord([masked])}), reply_to=msg)


def unmask(msg: Message, context: Context) -> Message:
    session, n = _session(context)
    ask = msg.content["unmask"]
    b, sk = session.unmask(list(ask["survivors"]), list(ask["dropped"]))
    del context.state[SESSION]  # the round is over for this hospital
    return Message(RecordDict({"b": ConfigRecord({"nodes": list(b), "shares": list(b.values())}),
                               "sk": ConfigRecord({"nodes": list(sk), "shares": list(sk.values())})}),
                   reply_to=msg)


def _keep(context: Context, session: ClientSession, num_examples: int) -> None:
    context.state[SESSION] = ConfigRecord({"state": session.to_bytes(), "num-examples": num_examples})


def _session(context: Context) -> tuple[ClientSession, int]:
    kept = context.state[SESSION]
    return ClientSession.from_bytes(kept["state"]), int(kept["num-examples"])
