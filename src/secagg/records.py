"""What travels between a hospital and the server: the update's flat layout and the key records.

Both sides must lay an update out and read a record back identically, so these live
here, below the ClientApp and the strategy, not in either.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from src.secagg.graph import GraphView
from src.secagg.identity import RoundKeys


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """The floating-point arrays of a record (a round's model travels as one: src/models/wire.py), in order,
    as one float64 vector."""
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in arrays.values()
                           if np.issubdtype(a.numpy().dtype, np.floating)])


def apply_update(arrays: ArrayRecord, delta: np.ndarray) -> ArrayRecord:
    """`arrays` + `delta` (as laid out by `flatten`); other arrays are kept as they are."""
    out, offset = {}, 0
    for key, array in arrays.items():
        value = array.numpy()
        if np.issubdtype(value.dtype, np.floating):
            value = (value + delta[offset:offset + value.size].reshape(value.shape)).astype(value.dtype)
            offset += value.size
        out[key] = Array(np.ascontiguousarray(value))
    return ArrayRecord(array_dict=out)


def keys_record(keys: RoundKeys) -> ConfigRecord:
    """A hospital's signed round keys as a message record."""
    return ConfigRecord({"name": keys.name, "c_pk": keys.c_pk, "s_pk": keys.s_pk, "commitment": keys.commitment,
                         "signature": keys.signature})


def round_keys(record) -> RoundKeys:
    """`keys_record` read back; KeyError or TypeError when a field is missing."""
    return RoundKeys(str(record["name"]), record["c_pk"], record["s_pk"], record["commitment"], record["signature"])


def peers_record(server_round: int, peers: dict[int, RoundKeys], view: GraphView) -> ConfigRecord:
    """The neighbours' signed keys a hospital needs for stage 2, one list per field, and the graph."""
    keys = list(peers.values())
    return ConfigRecord({"round": server_round, "nodes": list(peers), "names": [k.name for k in keys],
                         "c_pk": [k.c_pk for k in keys], "s_pk": [k.s_pk for k in keys],
                         "commitments": [k.commitment for k in keys], "signatures": [k.signature for k in keys],
                         "participants": list(view.participants), "num_shares": view.num_shares,
                         "sharing": list(view.sharing)})


def peers_keys(record) -> dict[int, RoundKeys]:
    """`peers_record` read back."""
    fields = ("nodes", "names", "c_pk", "s_pk", "commitments", "signatures")
    return {int(node): RoundKeys(str(name), *rest) for node, name, *rest in zip(*(record[f] for f in fields))}


def peers_view(record) -> GraphView:
    """The graph of a `peers_record`; KeyError, TypeError or ValueError when malformed."""
    return GraphView(tuple(record["participants"]), record["num_shares"], tuple(record["sharing"]))
