"""A hospital's secure-aggregation state between stages, as bytes.

Flower runs each ClientApp message in a fresh process, so whatever a hospital must
remember from one stage to the next (its private keys, its seed b, the shares it
holds) goes into Context.state as bytes. Format: UTF-8 JSON, one object, no
executable content (never pickle):

    {"format": "fedcxr-secagg-client/3",
     "node_id": int, "run_id": int, "round": int, "threshold": int, "clip_range": float,
     "quant_bits": int, "vector_length": int | null,
     "min_threshold": int, "min_survivors": int, "complete_graph": bool,   # the hospital's own policy
     "stage": "new" | "advertised" | "shared" | "masked" | "signed" | "unmasked",
     "c_sk": b64 | null, "s_sk": b64 | null, "b": b64 | null,   # wiped after masking
     "peers":    [[node, c_pk b64, s_pk b64], ...],   # neighbours' keys, itself included
     "names":    [[node, hospital], ...],         # neighbours' roster names (their keys were signed)
     "view": {"participants": [node, ...], "num_shares": int, "sharing": [node, ...]} | null,
                                                  # the graph it was shown (its digest is signed with survivors)
     "survivors": [node, ...] | null,             # the survivor list it signed (consistency check)
     "shares":   [[node, b-share b64, sk-share b64], ...],   # shares it holds, its own included
     "rejected": [[node, reason], ...],   # ciphertexts that failed authentication
     "revealed": [[node, "b" | "sk"], ...]}

b64 is standard base64 with padding; node ids are JSON integers (up to 2^64 - 1).
The bytes hold private keys while a round runs: keep them where Context.state is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from .graph import GraphView

FORMAT = "fedcxr-secagg-client/3"
STAGES = ("new", "advertised", "shared", "masked", "signed", "unmasked")


class StateError(ValueError):
    """Bytes that are not a secure-aggregation client state (corrupt, tampered, other version)."""


@dataclass
class ClientState:
    node_id: int
    round: int
    threshold: int
    clip_range: float
    quant_bits: int
    vector_length: int | None = None
    run_id: int = 0
    min_threshold: int = 2
    min_survivors: int = 2
    complete_graph: bool = False
    stage: str = "new"
    c_sk: bytes | None = None
    s_sk: bytes | None = None
    b: bytes | None = None
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    view: GraphView | None = None
    survivors: list[int] | None = None
    rejected: dict[int, str] = field(default_factory=dict)
    revealed: dict[int, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "node_id": self.node_id, "round": self.round, "threshold": self.threshold,
            "clip_range": float(self.clip_range), "quant_bits": self.quant_bits,
            "vector_length": self.vector_length, "run_id": self.run_id, "min_threshold": self.min_threshold,
            "min_survivors": self.min_survivors, "complete_graph": self.complete_graph, "stage": self.stage,
            "c_sk": _enc(self.c_sk), "s_sk": _enc(self.s_sk), "b": _enc(self.b),
            "peers": [[k, _enc(c), _enc(s)] for k, (c, s) in sorted(self.peers.items())],
            "shares": [[k, _enc(b), _enc(s)] for k, (b, s) in sorted(self.shares.items())],
            "names": [[k, v] for k, v in sorted(self.names.items())],
            "view": None if self.view is None else {"participants": list(self.view.participants),
                                                    "num_shares": self.view.num_shares,
                                                    "sharing": list(self.view.sharing)},
            "survivors": self.survivors,
            "rejected": [[k, v] for k, v in sorted(self.rejected.items())],
            "revealed": [[k, v] for k, v in sorted(self.revealed.items())],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientState:
        """Parse and type-check; StateError (a ValueError) naming the offending field on anything unexpected."""
        try:
            doc = json.loads(bytes(data).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StateError(f"secagg client state: not JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StateError(f"secagg client state: expected format {FORMAT!r}")
        if doc.get("stage") not in STAGES:
            raise StateError(f"secagg client state: stage: expected one of {STAGES}, got {doc.get('stage')!r}")
        vector_length = doc.get("vector_length")
        clip = doc.get("clip_range")
        if not isinstance(clip, (int, float)) or isinstance(clip, bool):
            raise StateError("secagg client state: clip_range: expected a number")
        return cls(
            node_id=_int(doc, "node_id"), round=_int(doc, "round"), threshold=_int(doc, "threshold"),
            clip_range=float(clip), quant_bits=_int(doc, "quant_bits"),
            vector_length=None if vector_length is None else _int(doc, "vector_length"),
            run_id=_int(doc, "run_id"), min_threshold=_int(doc, "min_threshold"),
            min_survivors=_int(doc, "min_survivors"), complete_graph=_bool(doc, "complete_graph"),
            stage=doc["stage"],
            c_sk=_dec(doc.get("c_sk"), "c_sk"), s_sk=_dec(doc.get("s_sk"), "s_sk"), b=_dec(doc.get("b"), "b"),
            peers={k: (_req(c, "peers"), _req(s, "peers")) for k, c, s in _rows(doc, "peers", 3)},
            shares={k: (_req(b, "shares"), _req(s, "shares")) for k, b, s in _rows(doc, "shares", 3)},
            names={k: _str(v, "names") for k, v in _rows(doc, "names", 2)},
            view=_view(doc.get("view")),
            survivors=_survivors(doc.get("survivors")),
            rejected={k: _str(v, "rejected") for k, v in _rows(doc, "rejected", 2)},
            revealed={k: _kind(v) for k, v in _rows(doc, "revealed", 2)},
        )


def _enc(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def _dec(value, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StateError(f"secagg client state: {name}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise StateError(f"secagg client state: {name}: invalid base64") from None


def _req(value, name: str) -> bytes:
    out = _dec(value, name)
    if out is None:
        raise StateError(f"secagg client state: {name}: missing bytes")
    return out


def _int(doc: dict, name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StateError(f"secagg client state: {name}: expected a non-negative integer, got {value!r}")
    return value


def _bool(doc: dict, name: str) -> bool:
    value = doc.get(name)
    if not isinstance(value, bool):
        raise StateError(f"secagg client state: {name}: expected true or false, got {value!r}")
    return value


def _str(value, name: str) -> str:
    if not isinstance(value, str):
        raise StateError(f"secagg client state: {name}: expected text")
    return value


def _survivors(value) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise StateError("secagg client state: survivors: expected a list of node ids")
    return [_int({"node": v}, "node") for v in value]


def _view(value) -> GraphView | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("participants"), list)
            and isinstance(value.get("sharing"), list)):
        raise StateError("secagg client state: view: expected participants, num_shares and sharing")
    try:
        return GraphView(tuple(_int({"node": v}, "node") for v in value["participants"]),
                         _int(value, "num_shares"),
                         tuple(_int({"node": v}, "node") for v in value["sharing"]))
    except ValueError as err:
        raise StateError(f"secagg client state: view: {err}") from None


def _kind(value) -> str:
    if value not in ("b", "sk"):
        raise StateError(f"secagg client state: revealed: expected 'b' or 'sk', got {value!r}")
    return value


def _rows(doc: dict, name: str, width: int) -> list[list]:
    rows = doc.get(name)
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == width for r in rows):
        raise StateError(f"secagg client state: {name}: expected a list of {width}-item lists")
    for r in rows:
        _int({"node": r[0]}, "node")
    return rows
