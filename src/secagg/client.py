"""A hospital's side of one secure-aggregation round, driven stage by stage.

Each stage is one method; the Flower ClientApp handler calls it with what the
server sent, returns what it gives back, and keeps `to_bytes()` in Context.state
until the next message (`ClientSession.from_bytes`).

    session = ClientSession(node_id, **server_session.client_config(), run_id=..., min_threshold=...)
    keys = session.advertise_keys(identity)                         # -> RoundKeys (signed)
    ciphertexts = session.share_keys({peer: RoundKeys, ...}, identity, graph_view)   # -> {dst: bytes}
    masked = session.masked_input({src: bytes, ...}, update, n)     # -> uint64[L + 1]
    signature = session.sign_survivors(survivors, identity)         # consistency check
    b_shares, sk_shares = session.unmask(survivors, dropped, {node: signature}, identity)

The hospital's own policy (`min_threshold`, `min_survivors`, `complete_graph`) is
checked here, never taken from the server: a threshold below max(min_threshold, a
strict majority of the neighbours it shares with), a survivor list shorter than
max(threshold, min_survivors), or (with `complete_graph`) a graph in which a hospital
sharing keys is not its neighbour is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np

from .encoding import check_params, encode
from .errors import BelowThresholdError, SecAggError
from .graph import GraphView
from .identity import Identity, RoundKeys, commitment, survivors_message
from .keys import (
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
    """One hospital, one round. Refuses stages out of order and requests that would unmask it.

    A second session of a round that masked an update would sign a second survivor list: the
    caller starts none (src/client/secure_aggregation.py)."""

    def __init__(self, node_id: int, server_round: int, threshold: int, clip_range: float, quant_bits: int,
                 vector_length: int | None = None, *, run_id: int = 0, min_threshold: int = 2,
                 min_survivors: int = 2, complete_graph: bool = False):
        check_params(clip_range, quant_bits)
        for value in (node_id, server_round, run_id):
            u64(value)  # they travel as 8 bytes in keys, signatures and associated data
        if int(threshold) < max(2, int(min_threshold)):
            raise SecAggError(f"hospital {node_id}: refusing round {server_round}: threshold {threshold} is below "
                              f"this hospital's policy (hospital.min_threshold={min_threshold}, and at least 2)")
        self.state = ClientState(int(node_id), int(server_round), int(threshold), float(clip_range),
                                 int(quant_bits), None if vector_length is None else int(vector_length),
                                 run_id=int(run_id), min_threshold=int(min_threshold),
                                 min_survivors=int(min_survivors), complete_graph=bool(complete_graph))

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
    def advertise_keys(self, identity: Identity) -> RoundKeys:
        """Fresh X25519 pairs (c_pk for share encryption, s_pk for pairwise masks), a fresh self-mask
        seed b and a commitment to it, all signed with the hospital's identity key."""
        self._expect("new")
        st = self.state
        st.c_sk, c_pk = generate_keypair()
        st.s_sk, s_pk = generate_keypair()
        st.b = os.urandom(32)
        unsigned = RoundKeys(identity.name, c_pk, s_pk, commitment(st.b, st.round, self.node_id), b"")
        message = unsigned.message(st.run_id, st.round, self.node_id, st.threshold)
        st.stage = "advertised"
        return RoundKeys(**{**unsigned.__dict__, "signature": identity.sign(message)})

    # -- stage 2 --------------------------------------------------------------------
    def share_keys(self, public_keys: Mapping[int, RoundKeys], identity: Identity, view: GraphView) -> dict[int, bytes]:
        """Shamir-share b and s_sk among the neighbours whose signed keys check out.

        `public_keys`: {neighbour: RoundKeys}, this hospital's own entry optional. Every
        entry must be signed, for this run, round, node and threshold, by a distinct
        hospital of the roster: otherwise the server substituted, replayed or invented
        keys, and the round is refused. They must be exactly this hospital's neighbours in
        `view`, the graph the server announces (its digest is signed with the survivor
        list). Returns {neighbour: ciphertext} for every neighbour but itself.
        """
        self._expect("advertised")
        st = self.state
        try:
            expected = view.peers_of(self.node_id)
        except (AttributeError, TypeError, ValueError) as err:
            raise SecAggError(f"hospital {self.node_id}: refusing round {st.round}: malformed graph ({err})") from None
        if st.complete_graph and expected != set(view.sharing):
            raise SecAggError(f"hospital {self.node_id}: refusing round {st.round}: the announced graph makes it a "
                              f"neighbour of {len(expected)} of the {len(view.sharing)} hospitals sharing keys, and "
                              "its policy asks for all of them (hospital.complete_graph)")
        shown = {int(node) for node in public_keys} | {self.node_id}
        if shown != expected:
            raise SecAggError(f"hospital {self.node_id}: refusing round {st.round}: sent the keys of {sorted(shown)}, "
                              f"but its neighbours in the announced graph are {sorted(expected)}")
        peers, names = {}, {}
        for node, keys in public_keys.items():
            node = int(node)
            if not (isinstance(keys, RoundKeys) and keys.well_formed()):
                raise SecAggError(f"hospital {self.node_id}: malformed keys for neighbour {node}")
            if node == self.node_id:
                if (keys.c_pk, keys.s_pk) != (public_key_of(st.c_sk), public_key_of(st.s_sk)):
                    raise SecAggError(f"hospital {self.node_id}: the server sent back keys that are not this "
                                      "hospital's")
            elif not identity.verify(keys.name, keys.signature, keys.message(st.run_id, st.round, node, st.threshold)):
                raise SecAggError(f"hospital {self.node_id}: refusing round {st.round}: the keys of neighbour {node} "
                                  f"(claiming to be {keys.name!r}) are not signed by a hospital of the roster for "
                                  "this run, round and threshold (substituted, replayed or invented keys)")
            peers[node], names[node] = (keys.c_pk, keys.s_pk), keys.name
        peers.setdefault(self.node_id, (public_key_of(st.c_sk), public_key_of(st.s_sk)))
        names.setdefault(self.node_id, identity.name)
        if len(set(names.values())) != len(names):
            raise SecAggError(f"hospital {self.node_id}: refusing round {st.round}: one hospital appears as several "
                              "neighbours")
        needed = max(st.min_threshold, len(peers) // 2 + 1)
        if len(peers) < st.threshold:
            raise BelowThresholdError(f"hospital {self.node_id}: {len(peers)} neighbours (itself included) "
                                      f"advertised keys, threshold {st.threshold}")
        if st.threshold < needed:
            raise SecAggError(f"hospital {self.node_id}: refusing round {st.round}: threshold {st.threshold} is below "
                              f"{needed}, a strict majority of its {len(peers)} share holders (or "
                              f"hospital.min_threshold={st.min_threshold})")
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
        st.peers, st.names, st.view = peers, names, view
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

    # -- consistency check (Bonawitz et al. 2017) ------------------------------------------
    def sign_survivors(self, survivors: Iterable[int], identity: Identity) -> bytes:
        """Sign the survivor list the server announced; a second, different list is refused."""
        self._expect("masked", "signed")
        st = self.state
        survivors = sorted({int(i) for i in survivors})
        if st.survivors is not None and st.survivors != survivors:
            raise SecAggError(f"hospital {self.node_id}: refusing to sign a second, different survivor list for "
                              f"round {st.round}")
        self._check_survivors(survivors)
        st.survivors, st.stage = survivors, "signed"
        return identity.sign(survivors_message(st.run_id, st.round, self.node_id, survivors, st.view.digest(),
                                               st.peers[self.node_id]))

    @property
    def partners(self) -> set[int]:
        """The hospitals it added pairwise masks with, itself included: the senders of the
        ciphertexts it got at stage 3 (each leaves a share, or a rejection when it failed to decrypt)."""
        return set(self.state.shares) | set(self.state.rejected)

    def _check_survivors(self, survivors: list[int]) -> None:
        st = self.state
        if self.node_id not in survivors:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: not listed as a survivor although it "
                              "sent its masked input")
        strangers = sorted(set(survivors).difference(st.view.sharing))
        if strangers:  # ids that hold no mask would pad a short list past min_survivors
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: survivors {strangers} did not share "
                              "keys in the graph the server announced")
        withheld = sorted(set(survivors).intersection(st.peers) - self.partners)
        if withheld:  # Bonawitz et al.'s U3 ⊆ U2. Otherwise the server withholds the shares of all but a few
            # neighbours, lists those few as dropped and the others as survivors, and rebuilds this hospital's
            # seed b and every mask key it used: its update, alone (tests/secagg/test_rejections.py)
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: neighbours {withheld} are listed as "
                              "survivors, but their shares never reached it, so it did not mask with them (the "
                              "server withheld them)")
        needed = max(st.threshold, st.min_survivors)
        if len(survivors) < needed:
            raise BelowThresholdError(f"hospital {self.node_id}: refusing to unmask a sum of {len(survivors)} "
                                      f"hospitals, at least {needed} needed (threshold {st.threshold}, "
                                      f"hospital.min_survivors={st.min_survivors})")

    # -- stage 4 --------------------------------------------------------------------
    def unmask(self, survivors: Iterable[int], dropped: Iterable[int], signatures: Mapping[int, bytes],
               identity: Identity) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Shares of b for surviving neighbours, of s_sk for dropped ones: ({node: share}, {node: share}).

        Only for the survivor list it signed, and only when at least `threshold` of its
        surviving neighbours signed that same list and graph with the keys it holds of them (a
        server that told hospitals different lists or showed them different graphs is caught
        here). Refuses (SecAggError) to reveal both kinds for
        one hospital, in this call or across calls: b and s_sk together would unmask its update.
        """
        self._expect("signed", "unmasked")
        st = self.state
        survivors, dropped = sorted({int(i) for i in survivors}), {int(i) for i in dropped}
        if survivors != st.survivors:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: the survivor list differs from the "
                              "one it signed")
        both = set(survivors) & dropped
        if both:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: {sorted(both)} listed as both "
                              "survivor and dropped")
        self._check_survivors(survivors)
        graph = st.view.digest()
        signed = [n for n in survivors if n in st.names and isinstance(signatures.get(n), bytes)
                  and identity.verify(st.names[n], signatures[n], survivors_message(st.run_id, st.round, n,
                                                                                     survivors, graph, st.peers[n]))]
        if len(signed) < st.threshold:
            raise SecAggError(f"hospital {self.node_id}: refusing to unmask: only {len(signed)} of its surviving "
                              f"neighbours signed the survivor list and graph it was given, threshold {st.threshold} "
                              "(the server may have sent different lists or graphs)")
        wanted = {node: "b" for node in set(survivors) & st.shares.keys()}
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
