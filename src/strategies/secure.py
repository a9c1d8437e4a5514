"""`strategy=secagg`: FedAvg (or FedProx local training) where the server sees only the sum.

Each round: the hospitals train and answer with fresh public keys instead of their
update (stage 1 of SecAgg+, `src/strategies/secagg/`); the strategy then runs the
other three stages over the Grid itself — share keys, masked input, unmask — and
turns the unmasked sum Σ n_i·q(Δ_i), Σ n_i into the new global model. Updates are
deltas Δ_i = trained − global, so they fit a small clipping range.

Why a custom strategy: Flower's SecAgg+ (`SecAggPlusWorkflow` + `secaggplus_mod`)
runs only with legacy strategies and NumPyClient, and expands masks with NumPy's
Mersenne Twister seeded from 32 bits; the Message-API strategies have none.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx

from src.strategies.observed import Observed
from src.strategies.secagg import ServerSession, check_modulus, dequantize_mean

log = logging.getLogger("fedcxr")
STAGES = ("secagg_share", "secagg_mask", "secagg_unmask")


def check_secagg(strategy, max_examples_per_hospital: int, num_hospitals: int) -> None:
    """Refuse secure-aggregation settings that cannot work for this federation, naming the key."""
    check_modulus(int(strategy.quant_bits), max_examples_per_hospital, num_hospitals)
    ServerSession(1, range(1, num_hospitals + 1), 1, clip_range=float(strategy.clip_range),
                  quant_bits=int(strategy.quant_bits), num_shares=strategy.num_shares, threshold=strategy.threshold)


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """The floating-point arrays of a model, in state_dict order, as one float64 vector."""
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in arrays.values()
                           if np.issubdtype(a.numpy().dtype, np.floating)])


def apply_update(arrays: ArrayRecord, delta: np.ndarray) -> ArrayRecord:
    """`arrays` + `delta` (as laid out by `flatten`); integer buffers are kept as they are."""
    out, offset = {}, 0
    for key, array in arrays.items():
        value = array.numpy()
        if np.issubdtype(value.dtype, np.floating):
            value = (value + delta[offset:offset + value.size].reshape(value.shape)).astype(value.dtype)
            offset += value.size
        out[key] = Array(np.ascontiguousarray(value))
    return ArrayRecord(array_dict=out)


class SecureAggregationMixin:
    """Replaces a strategy's plain averaging by the secure-aggregation stages (after Observed in the MRO)."""

    def __init__(self, *, clip_range: float, quant_bits: int, num_shares: int | None, threshold: int | None,
                 stage_timeout: float, **kwargs):
        super().__init__(**kwargs)
        self.clip_range, self.quant_bits = float(clip_range), int(quant_bits)
        self.num_shares, self.threshold, self.stage_timeout = num_shares, threshold, float(stage_timeout)
        self.sessions: dict[int, ServerSession] = {}

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        session = ServerSession(server_round, [m.metadata.dst_node_id for m in messages], flatten(arrays).size,
                                clip_range=self.clip_range, quant_bits=self.quant_bits,
                                num_shares=self.num_shares, threshold=self.threshold)
        self.sessions[server_round] = session
        self._grid, self._global = grid, arrays
        secagg = ConfigRecord({f"secagg.{k}": v for k, v in session.client_config().items()})
        for m in messages:
            m.content["secagg"] = secagg
        return messages

    def aggregate_train(self, server_round, replies):
        """Stages 2–4 over the Grid; the server never holds one hospital's update in the clear.

        Raises BelowThresholdError (from the session) when too few hospitals remain: the
        caller keeps the old global model.
        """
        session = self.sessions.pop(server_round)
        replies = list(replies)
        for m in replies:
            keys = m.content["secagg-keys"]
            session.receive_public_keys(m.metadata.src_node_id, keys["c_pk"], keys["s_pk"])

        requests = session.share_keys_requests()
        for node, content in self._ask(server_round, "secagg_share", {n: RecordDict({"peers": ConfigRecord({
                "nodes": list(peers), "c_pk": [k[0] for k in peers.values()],
                "s_pk": [k[1] for k in peers.values()]})}) for n, peers in requests.items()}):
            shares = content["shares"]
            session.receive_ciphertexts(node, dict(zip(shares["to"], shares["ciphertexts"])))

        requests = session.masked_input_requests()
        for node, content in self._ask(server_round, "secagg_mask", {n: RecordDict({"shares": ConfigRecord({
                "from": list(incoming), "ciphertexts": list(incoming.values())})})
                for n, incoming in requests.items()}):
            session.receive_masked_vector(node, next(iter(content["masked"].values())).numpy())

        survivors, dropped = session.unmask_request()
        ask = ConfigRecord({"survivors": survivors, "dropped": dropped})
        for node, content in self._ask(server_round, "secagg_unmask", {n: RecordDict({"unmask": ask})
                                                                       for n in survivors}):
            b, sk = content["b"], content["sk"]
            session.receive_shares(node, dict(zip(b["nodes"], b["shares"])), dict(zip(sk["nodes"], sk["shares"])))

        total, examples = session.aggregate()
        for rejection in session.rejections:
            log.warning("secagg round %d: rejected %s", server_round, rejection)
        named = lambda nodes: sorted(self.names.get(n, f"node {n}") for n in nodes)  # noqa: E731
        self.rounds[server_round]["secure_aggregation"] = {
            "survivors": named(survivors), "dropped": named(dropped), "threshold": session.threshold,
            "rejections": [f"{r.stage}: {named([r.node])[0]}: {r.reason}" for r in session.rejections]}
        delta = dequantize_mean(total, examples, self.clip_range, self.quant_bits, dtype=np.float64)
        included = [m for m in replies if m.metadata.src_node_id in set(survivors)]
        metrics = self.train_metrics_aggr_fn([m.content for m in included], self.weighted_by_key)
        return apply_update(self._global, delta), metrics

    def _ask(self, server_round: int, stage: str, contents: dict[int, RecordDict]):
        """Send one stage's messages; yield (node, content) of each answer without an error."""
        messages = [Message(content=content, dst_node_id=node, message_type=f"train.{stage}",
                            group_id=str(server_round)) for node, content in contents.items()]
        for reply in self._grid.send_and_receive(messages, timeout=self.stage_timeout):
            if reply.has_error():
                log.warning("secagg round %d: %s: no answer from node %s (%s)", server_round, stage,
                            reply.metadata.src_node_id, reply.error.reason)
            else:
                yield reply.metadata.src_node_id, reply.content


class SecureFedAvg(Observed, SecureAggregationMixin, FedAvg):
    """FedAvg with secure aggregation of the updates."""


class SecureFedProx(Observed, SecureAggregationMixin, FedProx):
    """FedProx local training with secure aggregation of the updates."""
