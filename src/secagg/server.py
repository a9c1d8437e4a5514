"""The server's side of one secure-aggregation round: route, check, unmask, sum.

The server relays keys and encrypted shares between neighbours, adds up masked
vectors as they arrive (one running uint64 sum, never one vector per hospital),
then rebuilds the seeds b of the survivors and the mask keys s_sk of hospitals
that dropped after sharing keys, and removes exactly those masks. A bad answer
(non-participant, wrong stage, second answer, wrong length or dtype, malformed
field) is logged, recorded in `rejections` and ignored; too few hospitals or
shares at any stage raise BelowThresholdError (the caller keeps the old model).

    server = ServerSession(rnd, participants, vector_length, clip_range=..., quant_bits=...)
    config = server.client_config()                           # to every participant
    server.receive_public_keys(node, round_keys)              # stage 1 answers (signed RoundKeys)
    for node, keys in server.share_keys_requests().items():   # {node: {peer: RoundKeys}}, and server.view
    server.receive_ciphertexts(node, {dst: ct})               # stage 2 answers
    for node, cts in server.masked_input_requests().items():  # {node: {src: ct}}
    server.receive_masked_vector(node, vector)                # stage 3 answers
    survivors = server.consistency_request()                  # to every survivor, to sign
    server.receive_signature(node, signature)                 # consistency answers
    survivors, dropped, signatures = server.unmask_request()  # to every survivor
    server.receive_shares(node, b_shares, sk_shares)          # stage 4 answers
    total, total_weight = server.aggregate()                  # sum n_i q_i (uint64[L]), sum n_i

Integrity: a rebuilt seed b must match the commitment its hospital signed in stage 1,
a rebuilt mask key s_sk the public key it advertised, and the unmasked sum must lie
in the range honest inputs can produce; anything else is a SecAggError (a wrong share,
or a hospital that added what the protocol does not allow), and the round fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .encoding import check_params, check_range
from .errors import BelowThresholdError, SecAggError
from .graph import (
    GraphView,
    circulant_neighbours,
    components,
    default_num_shares,
    default_threshold,
)
from .identity import SIGNATURE_BYTES, RoundKeys, commitment
from .keys import combine_secret, public_key_of, u64
from .masks import add_pairwise, add_self_mask, pairwise_seed

log = logging.getLogger(__name__)
STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmask", "done")


@dataclass(frozen=True)
class Rejection:
    stage: str
    node: int
    reason: str


class ServerSession:
    """One round of SecAgg+ among `participants` (Flower node ids) on vectors of length `vector_length`."""

    def __init__(self, server_round: int, participants, vector_length: int, *, clip_range: float,
                 quant_bits: int, num_shares: int | None = None, threshold: int | None = None,
                 min_survivors: int = 1):
        check_params(clip_range, quant_bits)
        self.round = int(server_round)
        u64(self.round)
        self.participants = sorted({int(p) for p in participants})
        for p in self.participants:
            u64(p)
        self.vector_length = int(vector_length)
        self.clip_range, self.quant_bits = float(clip_range), int(quant_bits)
        n = len(self.participants)
        self.num_shares = int(num_shares) if num_shares is not None else default_num_shares(max(n, 1))
        self.neighbours = circulant_neighbours(self.participants, self.num_shares)
        degree = len(next(iter(self.neighbours.values()))) if n else 0
        self.threshold = int(threshold) if threshold is not None else default_threshold(degree)
        if not 2 <= self.threshold <= degree:
            raise ValueError(f"strategy.threshold: expected between 2 and the degree {degree} "
                             f"({n} hospitals), got {self.threshold}")
        self.min_survivors = max(self.threshold, int(min_survivors))
        self.stage = STAGES[0]
        self.rejections: list[Rejection] = []
        self.public_keys: dict[int, RoundKeys] = {}
        self.ciphertexts: dict[int, dict[int, bytes]] = {}
        self.masked: set[int] = set()
        self.signatures: dict[int, bytes] = {}
        self.shares: dict[int, tuple[dict[int, bytes], dict[int, bytes]]] = {}
        self._sent: dict[int, set[int]] = {}  # node -> the neighbours whose keys it was sent
        self.view: GraphView | None = None  # the graph announced with them (set when stage 1 closes)
        self._sum = np.zeros(self.vector_length + 1, dtype=np.uint64)
        self.survivors: list[int] = []
        self.dropped: list[int] = []

    def client_config(self) -> dict:
        """What each hospital needs to build its ClientSession (plain ints and floats)."""
        return {"server_round": self.round, "threshold": self.threshold, "clip_range": self.clip_range,
                "quant_bits": self.quant_bits, "vector_length": self.vector_length}

    # -- bookkeeping ------------------------------------------------------------------
    def reject(self, stage: str, node, reason: str) -> bool:
        self.rejections.append(Rejection(stage, node, reason))
        log.warning("secagg round %d, %s: ignored the answer of %s: %s", self.round, stage, node, reason)
        return False

    def _admit(self, stage: str, node, answered, eligible) -> bool:
        """The checks every answer goes through: participant, current stage, eligible, first answer."""
        if node not in self.neighbours:
            return self.reject(stage, node, "not a participant of this round")
        if self.stage != stage:
            return self.reject(stage, node, f"out of order: the round is at {self.stage}")
        if node not in eligible:
            return self.reject(stage, node, "out of order: did not complete the previous stage")
        if node in answered:
            return self.reject(stage, node, "answered this stage twice (first answer kept)")
        return True

    def _close(self, stage: str, answered) -> list[int]:
        if self.stage != stage:
            raise SecAggError(f"secagg round {self.round}: cannot close {stage} at stage {self.stage}")
        alive = sorted(answered)
        if len(alive) < self.threshold:
            raise BelowThresholdError(f"secagg round {self.round}: only {len(alive)} hospitals completed {stage}, "
                                      f"threshold {self.threshold}")
        self.stage = STAGES[STAGES.index(stage) + 1]
        return alive

    # -- stage 1: advertise keys ----------------------------------------------------------
    def receive_public_keys(self, node: int, keys: RoundKeys) -> bool:
        """A hospital's signed round keys: True if kept; False if rejected (logged, recorded in `rejections`).

        The server relays the signature; the hospitals verify it against their roster."""
        if not self._admit("advertise_keys", node, self.public_keys, self.neighbours):
            return False
        if not (isinstance(keys, RoundKeys) and keys.well_formed()):
            return self.reject("advertise_keys", node, "expected a name, two 32-byte public keys, a 32-byte "
                                                       "commitment and a 64-byte signature")
        seen = {k for other in self.public_keys.values() for k in (other.c_pk, other.s_pk)}
        if keys.c_pk == keys.s_pk or keys.c_pk in seen or keys.s_pk in seen:
            return self.reject("advertise_keys", node, "public key reused")
        self.public_keys[node] = keys
        return True

    def share_keys_requests(self) -> dict[int, dict[int, RoundKeys]]:
        """Close stage 1: {node: {neighbour: RoundKeys}} (itself included) for each hospital to ask,
        each with `view`, the graph they are the neighbourhoods of."""
        alive = set(self._close("advertise_keys", self.public_keys))
        short = True
        while short:  # a hospital that cannot share t-of-n is left out, which may leave out others
            short = [n for n in sorted(alive) if len(alive.intersection(self.neighbours[n])) < self.threshold]
            for node in short:
                log.warning("secagg round %d: hospital %d left out, fewer than %d of its neighbours advertised "
                            "keys", self.round, node, self.threshold)
                alive.discard(node)
        if len(alive) < self.threshold:
            raise BelowThresholdError(f"secagg round {self.round}: only {len(alive)} hospitals can share keys, "
                                      f"threshold {self.threshold}")
        self._sent = {node: alive.intersection(self.neighbours[node]) for node in alive}
        self.view = GraphView(tuple(self.participants), self.num_shares, tuple(alive))
        return {node: {p: self.public_keys[p] for p in sorted(near)} for node, near in self._sent.items()}

    # -- stage 2: share keys ----------------------------------------------------------------
    def receive_ciphertexts(self, node: int, ciphertexts: dict[int, bytes]) -> bool:
        """{dst: ciphertext}, one per neighbour it was sent keys of: True if kept; False if rejected (logged, recorded in `rejections`)."""
        if not self._admit("share_keys", node, self.ciphertexts, self._sent):
            return False
        expected = self._sent[node] - {node}
        if not isinstance(ciphertexts, dict) or set(ciphertexts) != expected:
            got = sorted(ciphertexts) if isinstance(ciphertexts, dict) else type(ciphertexts).__name__
            return self.reject("share_keys", node, f"expected ciphertexts for {sorted(expected)}, got {got}")
        if not all(isinstance(ct, bytes) for ct in ciphertexts.values()):
            return self.reject("share_keys", node, "expected bytes ciphertexts")
        self.ciphertexts[node] = dict(ciphertexts)
        return True

    def masked_input_requests(self) -> dict[int, dict[int, bytes]]:
        """Close stage 2: {node: {src: ciphertext addressed to node}} for each hospital that shared keys."""
        alive = self._close("share_keys", self.ciphertexts)
        return {dst: {src: self.ciphertexts[src][dst] for src in alive if dst in self.ciphertexts[src]}
                for dst in alive}

    # -- stage 3: masked input --------------------------------------------------------------
    def receive_masked_vector(self, node: int, vector: np.ndarray) -> bool:
        """A uint64 vector of length vector_length + 1, added to the running sum: True if kept; False if rejected (logged, recorded in `rejections`)."""
        if not self._admit("masked_input", node, self.masked, self.ciphertexts):
            return False
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint64:
            return self.reject("masked_input", node, f"expected a uint64 numpy array, got "
                                f"{getattr(vector, 'dtype', type(vector).__name__)}")
        if vector.shape != self._sum.shape:
            return self.reject("masked_input", node, f"expected shape {self._sum.shape}, got {vector.shape}")
        self._sum += vector
        self.masked.add(node)
        return True

    def consistency_request(self) -> list[int]:
        """Close stage 3: the survivors, the same list to every survivor, each to sign it.

        Refuses (BelowThresholdError) with fewer than max(threshold, min_survivors)
        survivors: a sum over few hospitals, differenced with another round's, would
        reveal one of them; a failed round releases nothing.
        """
        self.survivors = self._close("masked_input", self.masked)
        if len(self.survivors) < self.min_survivors:
            raise BelowThresholdError(f"secagg round {self.round}: only {len(self.survivors)} hospitals sent masked "
                                      f"inputs, at least {self.min_survivors} needed to unmask")
        self.dropped = sorted(set(self.ciphertexts) - self.masked)
        small = [sorted(g) for g in components(self.survivors, self.neighbours) if len(g) < self.threshold]
        if small:  # the server could read the sum of such a group on its own: refuse to unmask
            raise BelowThresholdError(f"secagg round {self.round}: dropouts cut the survivors into groups "
                                      f"smaller than the threshold {self.threshold}: {small}")
        return list(self.survivors)

    def receive_signature(self, node: int, signature: bytes) -> bool:
        """A survivor's signature of the survivor list (the hospitals verify it)."""
        if not self._admit("consistency", node, self.signatures, self.masked):
            return False
        if not (isinstance(signature, bytes) and len(signature) == SIGNATURE_BYTES):
            return self.reject("consistency", node, f"expected a {SIGNATURE_BYTES}-byte signature")
        self.signatures[node] = signature
        return True

    def unmask_request(self) -> tuple[list[int], list[int], dict[int, bytes]]:
        """Close the consistency check: (survivors, dropped, {survivor: signature}) for every survivor."""
        self._close("consistency", self.signatures)
        return list(self.survivors), list(self.dropped), dict(self.signatures)

    # -- stage 4: unmask --------------------------------------------------------------------
    def receive_shares(self, node: int, b_shares: dict[int, bytes], sk_shares: dict[int, bytes]) -> bool:
        """{survivor: b share}, {dropped: s_sk share}: True if kept; False if rejected (logged, recorded in `rejections`)."""
        if not self._admit("unmask", node, self.shares, self.signatures):
            return False
        near = set(self.neighbours[node])
        if not (isinstance(b_shares, dict) and isinstance(sk_shares, dict)):
            return self.reject("unmask", node, "expected two dicts of shares")
        if not set(b_shares) <= near.intersection(self.survivors) or not set(sk_shares) <= near.intersection(
                self.dropped):
            return self.reject("unmask", node, "shares for hospitals that are not its surviving/dropped neighbours")
        if not all(isinstance(s, bytes) for s in (*b_shares.values(), *sk_shares.values())):
            return self.reject("unmask", node, "expected bytes shares")
        self.shares[node] = (dict(b_shares), dict(sk_shares))
        return True

    def _held(self, owner: int, kind: int) -> list[bytes]:
        return [self.shares[h][kind][owner] for h in sorted(self.shares) if owner in self.shares[h][kind]]

    def _needed(self) -> list[tuple[int, int]]:
        """(hospital, 0 for b / 1 for s_sk): the secrets the sum cannot be unmasked without."""
        survivors = set(self.survivors)
        return [(u, 0) for u in self.survivors] + [
            (d, 1) for d in self.dropped if survivors.intersection(self.neighbours[d])]

    def _secret(self, owner: int, kind: int) -> bytes:
        held = self._held(owner, kind)
        if len(held) < self.threshold:
            name = ("seed b", "mask key s_sk")[kind]
            raise BelowThresholdError(f"secagg round {self.round}: {len(held)} shares of the {name} of hospital "
                                      f"{owner}, threshold {self.threshold}")
        return combine_secret(held[: self.threshold])

    def aggregate(self) -> tuple[np.ndarray, int]:
        """Close stage 4: (sum over survivors of n_i q_i as uint64[L], sum of n_i)."""
        if self.stage != "unmask":
            raise SecAggError(f"secagg round {self.round}: cannot aggregate at stage {self.stage}")
        survivors = set(self.survivors)
        secrets = {(o, k): self._secret(o, k) for o, k in self._needed()}  # all checks before any expansion
        seeds = {o: secret for (o, k), secret in secrets.items() if k == 0}
        keys = {o: secret for (o, k), secret in secrets.items() if k == 1}
        for u, b in seeds.items():  # a wrong share would otherwise give a silently wrong model
            if commitment(b, self.round, u) != self.public_keys[u].commitment:
                raise SecAggError(f"secagg round {self.round}: the shares of hospital {u}'s seed do not match its "
                                  "commitment (a tampered or wrong share)")
        for d, s_sk in keys.items():
            if public_key_of(s_sk) != self.public_keys[d].s_pk:
                raise SecAggError(f"secagg round {self.round}: the shares of hospital {d}'s mask key are inconsistent")
        total = self._sum.copy()
        for u, b in seeds.items():
            add_self_mask(total, b, sign=-1)
        for d, s_sk in keys.items():
            for u in survivors.intersection(self.neighbours[d]):
                add_pairwise(total, pairwise_seed(s_sk, self.public_keys[u].s_pk, self.round, u, d), u, d, sign=-1)
        self.stage = "done"
        weight = int(total[-1])
        check_range(total[:-1], weight, len(survivors), self.quant_bits)
        return total[:-1], weight
