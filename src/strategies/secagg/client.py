"""A hospital's side of one secure-aggregation round, driven stage by stage.

Each stage is one method; the Flower ClientApp handler calls it with what the
server sent, returns what it gives back, and keeps `to_bytes()` in Context.state
until the next message (`ClientSession.from_bytes`).

    session = ClientSession(node_id, **server_session.client_config())
    c_pk, s_pk = session.advertise_keys()
    ciphertexts = session.share_keys({peer: (c_pk, s_pk), ...})    # -> {dst: bytes}
    masked = session.masked_input({src: bytes, ...}, update, n)    # -> uint64[L + 1]
    b_shares, sk_shares = session.unmask(survivors, dropped)       # -> {node: bytes}, {node: bytes}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np

from .encoding import check_params, encode
from .errors import BelowThresholdError, SecAggError
from .keys import (
    KEY_BYTES,
    decrypt_shares,
    encrypt_shares,
    generate_keypair,
    public_key_of,
    split_secret,
    u64,
)
from .masks import add_pairwise, add_self_mask, pairwise_seed
from .state import ClientState

log = logging.getLogger(__name__)


class ClientSession:
    """One hospital, one round. Refuses stages out of order and requests that would unmask it."""

    def __init__(self, node_id: int, server_round: int, threshold: int, clip_range: float, quant_bits: int,
                 vector_length: int | None = None):
        check_params(clip_range, quant_bits)
        for value in (node_id, server_round):
            u64(value)  # both travel as 8 bytes in keys and associated data
        if int(threshold) < 1:
            raise ValueError(f"strategy.threshold: expected at least 1, got {threshold!r}")
        self.state = ClientState(int(node_id), int(server_round), int(threshold), float(clip_range),
                                 int(quant_bits), None if vector_length is None else int(vector_length))

    # -- serialization --------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Everything needed for the next stage (see state.py for the format)."""
        return self.state.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientSession:
        session = cls.__new__(cls)
        session.state = ClientState.from_bytes(data)
        return session

    @property
    def node_id(self) -> int:
        return self.state.node_id

    @property
    def rejected(self) -> dict[int, str]:
        """Senders whose share ciphertext was refused, and why."""
        return dict(self.state.rejected)

    def _expect(self, stage: str, *also: str) -> None:
        if self.state.stage not in (stage, *also):
            raise SecAggError(f"hospital {self.node_id}: stage out of order (at {self.state.stage!r}, "
                              f"expected {stage!r})")

    # -- stage 1 --------------------------------------------------------------------
    def advertise_keys(self) -> tuple[bytes, bytes]:
        """Fresh X25519 pairs: returns (c_pk for share encryption, s_pk for pairwise masks)."""
        self._expect("new")
        st = self.state
        st.c_sk, c_pk = generate_keypair()
        st.s_sk, s_pk = generate_keypair()
        st.stage = "advertised"
        return c_pk, s_pk

    # -- stage 2 --------------------------------------------------------------------
    def share_keys(self, public_keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Shamir-share a fresh seed b and s_sk among the neighbours that advertised keys.

        `public_keys`: {neighbour: (c_pk, s_pk)}, this hospital's own entry optional.
        Returns {neighbour: ciphertext} for every neighbour but itself.
        """
        self._expect("advertised")
        st = self.state
        own = (public_key_of(st.c_sk), public_key_of(st.s_sk))
        peers = {}
        for node, keys in public_keys.items():
            c_pk, s_pk = keys
            if not (isinstance(c_pk, bytes) and isinstance(s_pk, bytes) and len(c_pk) == len(s_pk) == KEY_BYTES):
                raise SecAggError(f"hospital {self.node_id}: public keys of {node}: expected two {KEY_BYTES}-byte keys")
            peers[int(node)] = (c_pk, s_pk)
        if peers.setdefault(self.node_id, own) != own:
            raise SecAggError(f"hospital {self.node_id}: the server sent back keys that are not this hospital's")
        if len(peers) < st.threshold:
            raise BelowThresholdError(f"hospital {self.node_id}: {len(peers)} neighbours (itself included) "
                                      f"advertised keys, threshold {st.threshold}")
        st.b = os.urandom(32)
        order = sorted(peers)
        b_shares = split_secret(st.b, st.threshold, len(order))
        sk_shares = split_secret(st.s_sk, st.threshold, len(order))
        ciphertexts = {}
        for node, b_share, sk_share in zip(order, b_shares, sk_shares):
            if node == self.node_id:
                st.shares[node] = (b_share, sk_share)
            else:
                ciphertexts[node] = encrypt_shares(st.c_sk, peers[node][0], st.round, self.node_id, node,
                                                   b_share, sk_share)
        st.peers = peers
        st.stage = "shared"
        return ciphertexts

    # -- stage 3 --------------------------------------------------------------------
    def check_senders(self, senders) -> None:
        """Whether masked_input can go ahead with shares from `senders`: callable before training,
        so that no privacy budget is spent on an update that could not be sent."""
        self._expect("shared")
        st = self.state
        for src in senders:
            if src == self.node_id or src not in st.peers:
                raise SecAggError(f"hospital {self.node_id}: ciphertext from {src}, who is not a neighbour")
        if len(senders) + 1 < st.threshold:
            raise BelowThresholdError(f"hospital {self.node_id}: {len(senders) + 1} neighbours (itself included) "
                                      f"shared keys, threshold {st.threshold}")

    def masked_input(self, ciphertexts: Mapping[int, bytes], update: np.ndarray, num_examples: int) -> np.ndarray:
        """Store the shares addressed to it, then mask the encoded update (uint64, length L + 1).

        `ciphertexts`: {src: ciphertext} from every neighbour that completed share_keys.
        Pairwise masks are added with exactly those senders (the server knows the same
        set, so the masks cancel or can be removed); a ciphertext that fails
        authentication is recorded in `rejected`, and that share is simply missing.
        """
        st = self.state
        update = np.asarray(update)
        if st.vector_length is not None and update.size != st.vector_length:
            raise ValueError(f"update: expected {st.vector_length} values, got {update.size}")
        senders = sorted(int(src) for src in ciphertexts)
        self.check_senders(senders)
        vector = encode(update, num_examples, st.clip_range, st.quant_bits)  # bad input fails before any change
        for src in senders:
            try:
                st.shares[src] = decrypt_shares(st.c_sk, st.peers[src][0], st.round, src, self.node_id,
                                                ciphertexts[src])
            except SecAggError as err:
                st.rejected[src] = str(err)
                log.warning("secagg round %d: hospital %d rejected the shares from %d: %s",
                            st.round, self.node_id, src, err)
        add_self_mask(vector, st.b)
        for src in senders:
            seed = pairwise_seed(st.s_sk, st.peers[src][1], st.round, self.node_id, src)
            add_pairwise(vector, seed, self.node_id, src)
        st.c_sk = st.s_sk = st.b = None  # not needed any more: do not keep secrets longer than the stage
        st.stage = "masked"
        return vector

    # -- stage 4 --------------------------------------------------------------------
    def unmask(self, survivors: Iterable[int], dropped: Iterable[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Shares of b for surviving neighbours, of s_sk for dropped ones: ({node: share}, {node: share}).

        Refuses (SecAggError) to reveal both kinds for one hospital, in this call or
        across calls: b and s_sk together would unmask its update.
        """
        self._expect("masked", "unmasked")
        st = self.state
        survivors, dropped = {int(i) for i in survivors}, {int(i) for i in dropped}
        both = survivors & dropped
        if both:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: {sorted(both)} listed as both "
                              "survivor and dropped")
        if len(survivors) < st.threshold:
            raise BelowThresholdError(f"hospital {self.node_id}: refusing to unmask a sum of {len(survivors)} "
                                      f"hospitals, threshold {st.threshold}")
        if self.node_id in dropped:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: listed as dropped although it "
                              "sent its masked input")
        wanted = {node: "b" for node in survivors & st.shares.keys()}
        wanted.update({node: "sk" for node in dropped & st.shares.keys()})
        changed = sorted(n for n, kind in wanted.items() if st.revealed.get(n, kind) != kind)
        if changed:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: already revealed the other "
                              f"secret of {changed}")
        st.revealed.update(wanted)
        st.stage = "unmasked"
        b_shares = {n: st.shares[n][0] for n, kind in wanted.items() if kind == "b"}
        sk_shares = {n: st.shares[n][1] for n, kind in wanted.items() if kind == "sk"}
        return b_shares, sk_shares
