"""Drive a whole secure-aggregation round in one process, as Flower would across many.

Every hospital's ClientSession lives only as bytes between stages (as in
Context.state), so every test also exercises to_bytes/from_bytes. A hospital in
`skip` does not answer that stage (it dropped).
"""

from __future__ import annotations

import numpy as np

from src.secagg import ClientSession, ServerSession
from src.secagg.identity import consortium


def reference_quantize(x, clip_range, quant_bits):
    """The encoding written out plainly (no chunks), to check the library against."""
    levels = 2**quant_bits - 1
    y = (np.clip(np.asarray(x, dtype=np.float64), -clip_range, clip_range) + clip_range) / (2 * clip_range) * levels
    return np.rint(y).astype(np.uint64)


def expected_sum(updates, weights, nodes, clip_range, quant_bits):
    """Exact sum of n_i * q(x_i) as Python ints (no wraparound possible), and sum of n_i."""
    total = sum(reference_quantize(updates[i], clip_range, quant_bits).astype(object) * weights[i] for i in nodes)
    return np.array(total, dtype=np.uint64), sum(weights[i] for i in nodes)


class Federation:
    def __init__(self, ids, vector_length, *, server_round=1, clip_range=1.0, quant_bits=16, **graph):
        self.server = ServerSession(server_round, ids, vector_length, clip_range=clip_range,
                                    quant_bits=quant_bits, **graph)
        self.states = {i: ClientSession(i, **self.server.client_config()).to_bytes() for i in ids}
        self.identities = {i: identity for i, identity in zip(ids, consortium([f"hospital_{i}" for i in ids]).values())}
        self.sent: dict[int, np.ndarray] = {}
        self.requests = None

    def session(self, node) -> ClientSession:
        return ClientSession.from_bytes(self.states[node])

    def _run(self, node, step):
        session = self.session(node)
        answer = step(session)
        self.states[node] = session.to_bytes()
        return answer

    def advertise(self, skip=()):
        for node in self.states:
            if node not in skip:
                assert self.server.receive_public_keys(
                    node, self._run(node, lambda s, n=node: s.advertise_keys(self.identities[n])))

    def share_keys(self, skip=()):
        self.requests = self.server.share_keys_requests()
        for node, keys in self.requests.items():
            if node not in skip:
                assert self.server.receive_ciphertexts(node, self._run(
                    node, lambda s, keys=keys, n=node: s.share_keys(keys, self.identities[n], self.server.view)))

    def masked_input(self, updates, weights, skip=(), tamper=lambda requests: None):
        self.requests = self.server.masked_input_requests()
        tamper(self.requests)
        for node, cts in self.requests.items():
            if node not in skip:
                vector = self._run(node, lambda s, c=cts, n=node: s.masked_input(c, updates[n], weights[n]))
                self.sent[node] = vector
                assert self.server.receive_masked_vector(node, vector)

    def consistency(self, skip=()):
        survivors = self.server.consistency_request()
        for node in survivors:
            if node not in skip:
                assert self.server.receive_signature(
                    node, self._run(node, lambda s, n=node: s.sign_survivors(survivors, self.identities[n])))
        return survivors

    def unmask(self, skip=(), consistency_skip=()):
        self.consistency(consistency_skip)
        survivors, dropped, signatures = self.server.unmask_request()
        for node in survivors:
            if node not in skip:
                assert self.server.receive_shares(node, *self._run(
                    node, lambda s, n=node: s.unmask(survivors, dropped, signatures, self.identities[n])))
        return survivors, dropped

    def run(self, updates, weights, drop=None):
        """Whole round; `drop` = {"advertise" | "share_keys" | "masked_input" | "unmask": ids not answering}."""
        drop = drop or {}
        self.advertise(drop.get("advertise", ()))
        self.share_keys(drop.get("share_keys", ()))
        self.masked_input(updates, weights, drop.get("masked_input", ()))
        self.unmask(drop.get("unmask", ()))
        return self.server.aggregate()


def random_inputs(ids, length, seed=0, clip_range=1.0):
    rng = np.random.default_rng(seed)
    updates = {i: rng.uniform(-clip_range, clip_range, length).astype(np.float32) for i in ids}
    weights = {i: int(rng.integers(1, 5000)) for i in ids}
    return updates, weights
