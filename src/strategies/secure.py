"""`strategy=secagg`: FedAvg (or FedProx local training) where the server sees only the sum.

SecAgg+ (`src/secagg/`) has four stages: advertise keys, share keys,
masked input, unmask. Only the last two need the round's update, and every extra
exchange with the hospitals costs seconds of Flower's polling, so the strategy runs
the first two stages of round r+1 inside messages of round r that are sent anyway:

    train r                global model, the shares addressed to the hospital, settings of r+1
    reply                  masked update (stage 3 of r), signed public keys for r+1 (stage 1 of r+1)
    secagg_consistency r   the survivors of r
    reply                  the hospital's signature of that list
    secagg_unmask r        survivors, dropped hospitals and every survivor's signature, neighbours' keys for r+1
    reply                  shares that unmask the sum (stage 4 of r), encrypted shares for r+1 (stage 2)

The consistency exchange is Bonawitz et al.'s defence against a server that tells
hospitals different survivor lists; with it a round costs two exchanges more than FedAvg.
It is not redundant even in a complete graph: of 5 hospitals (threshold 3), a server that
hands u only w1's and w2's shares and tells u {u, w1, w2}, x and y {u, x, y}, w1 {w1, u, x}
and w2 {w2, u, x} collects u's seed b and the mask keys of w1 and w2 (each from three
holders), hence u's update, alone. The first round, a resumed
run, or a round whose hospitals differ from the prepared ones first runs stages 1–2
on their own (`secagg_setup`, `secagg_share`). Updates are deltas Δ_i = trained −
global, so they fit a small clipping range; the unmasked sum Σ n_i·q(Δ_i), Σ n_i
becomes the new global model.

Why a custom strategy: Flower's SecAgg+ (`SecAggPlusWorkflow` + `secaggplus_mod`)
runs only with legacy strategies and NumPyClient, and expands masks with NumPy's
Mersenne Twister seeded from 32 bits; the Message-API strategies have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx

from src.secagg import BelowThresholdError, ServerSession, check_modulus, dequantize_mean
from src.secagg.records import apply_update, flatten, peers_record, round_keys
from src.strategies.observed import Observed, trained

log = logging.getLogger("fedcxr")


def check_secagg(strategy, max_examples_per_hospital: int, num_hospitals: int) -> None:
    """Refuse secure-aggregation settings that cannot work for this federation, naming the key."""
    check_modulus(int(strategy.quant_bits), max_examples_per_hospital, num_hospitals)
    ServerSession(1, range(1, num_hospitals + 1), 1, clip_range=float(strategy.clip_range),
                  quant_bits=int(strategy.quant_bits), num_shares=strategy.num_shares, threshold=strategy.threshold)


class SecureAggregationMixin:
    """Secure aggregation in place of a strategy's plain averaging (before Observed in the MRO)."""

    def __init__(self, *, clip_range: float, quant_bits: int, num_shares: int | None, threshold: int | None,
                 stage_timeout: float, num_rounds: int, min_survivors: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.min_survivors = int(min_survivors)
        self.clip_range, self.quant_bits = float(clip_range), int(quant_bits)
        self.num_shares, self.threshold, self.stage_timeout = num_shares, threshold, float(stage_timeout)
        self.num_rounds = int(num_rounds)
        self.current: ServerSession | None = None
        self.prepared: ServerSession | None = None  # the next round's, keys shared during this round

    def _session(self, server_round: int, nodes) -> ServerSession:
        return ServerSession(server_round, nodes, self._global_vector_length, clip_range=self.clip_range,
                             quant_bits=self.quant_bits, num_shares=self.num_shares, threshold=self.threshold,
                             min_survivors=self.min_survivors)

    def configure_train(self, server_round, arrays, config, grid):
        """Train messages to the hospitals whose keys are shared for this round, each with its shares.

        Raises BelowThresholdError when too few hospitals can take part: the caller keeps
        the old global model.
        """
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._grid, self._global = grid, arrays
        self._global_vector_length = flatten(arrays).size
        start = time.perf_counter()
        nodes = [m.metadata.dst_node_id for m in messages]
        session, incoming, how = self._ready(server_round, nodes)
        # a hospital holding too few shares could not mask: it would train for nothing
        incoming = {n: shares for n, shares in incoming.items() if len(shares) + 1 >= session.threshold}
        self.current, self.prepared = session, None
        extra = {"secagg": ConfigRecord(session.client_config())}
        if server_round < self.num_rounds:
            self.prepared = self._session(server_round + 1, incoming)
            extra["secagg-next"] = ConfigRecord(self.prepared.client_config())
        left_out = sorted(set(nodes) - set(incoming))
        for node in left_out:
            log.warning("secagg round %d: %s left out: it, or too many of its neighbours, did not complete "
                        "key sharing", server_round, self._name(node))
        self.rounds[server_round]["secure_aggregation"] = {"keys": how, "left_out": self._names(left_out)}
        self.rounds[server_round]["time"]["secagg_setup"] = time.perf_counter() - start
        kept = []  # Flower's messages share one content: each hospital gets its own, with its shares
        for m in messages:
            if m.metadata.dst_node_id in incoming:
                shares = incoming[m.metadata.dst_node_id]
                content = RecordDict({**m.content, **extra, "secagg-shares": ConfigRecord(
                    {"from": list(shares), "ciphertexts": list(shares.values())})})
                kept.append(Message(content=content, dst_node_id=m.metadata.dst_node_id,
                                    message_type=m.metadata.message_type, group_id=m.metadata.group_id))
        return kept

    def _ready(self, server_round: int, nodes) -> tuple[ServerSession, dict[int, dict[int, bytes]], str]:
        """This round's session past stage 2, the shares for each hospital, and where its keys came from."""
        prepared = self.prepared
        if prepared is not None and prepared.round == server_round and prepared.participants == sorted(nodes):
            try:
                return prepared, prepared.masked_input_requests(), f"shared during round {server_round - 1}"
            except BelowThresholdError as e:
                log.warning("%s; sharing keys again", e)
        session = self._session(server_round, nodes)
        settings = session.client_config()
        for node, content in self._ask(server_round, "secagg_setup", {
                n: RecordDict({"secagg": ConfigRecord(settings)}) for n in session.participants}):
            self.names[node] = str(content["hospital"]["name"]) if "hospital" in content else self._name(node)
            self._read(session, "advertise_keys", node, lambda c=content, n=node: session.receive_public_keys(
                n, round_keys(c["keys"])))
        requests = session.share_keys_requests()
        for node, content in self._ask(server_round, "secagg_share", {
                n: RecordDict({"peers": peers_record(server_round, peers, session.view)})
                for n, peers in requests.items()}):
            self._read(session, "share_keys", node, lambda c=content, n=node: self._ciphertexts(session, n, c))
        return session, session.masked_input_requests(), "shared before training"

    def aggregate_trained(self, server_round, answers):
        """Add up the masked updates, unmask the sum (sharing the next round's keys on the way).

        Raises BelowThresholdError (from the session) when too few hospitals remain, or
        SecAggError when the unmasked sum fails its integrity checks: the caller keeps the
        old global model.
        """
        session, prepared = self.current, self.prepared
        start = time.perf_counter()
        for m in answers:
            node, content = m.metadata.src_node_id, m.content
            if trained(m):
                self._read(session, "masked_input", node, lambda c=content, n=node: session.receive_masked_vector(
                    n, next(iter(c["secagg-masked"].values())).numpy()))
            if prepared is not None:
                self._read(prepared, "advertise_keys", node, lambda c=content, n=node: prepared.receive_public_keys(
                    n, round_keys(c["secagg-next"])))
        survivors = session.consistency_request()  # below max(threshold, min_hospitals) nothing is unmasked
        for node, content in self._ask(server_round, "secagg_consistency", {n: RecordDict({"consistency": ConfigRecord(
                {"round": server_round, "survivors": survivors})}) for n in survivors}):
            self._read(session, "consistency", node, lambda c=content, n=node: session.receive_signature(
                n, c["consistency"]["signature"]))
        survivors, dropped, signatures = session.unmask_request()
        contents = {n: RecordDict({"unmask": ConfigRecord({
            "round": server_round, "survivors": survivors, "dropped": dropped, "signers": list(signatures),
            "signatures": list(signatures.values())})}) for n in survivors}
        if prepared is not None:
            try:
                for n, peers in prepared.share_keys_requests().items():
                    contents.setdefault(n, RecordDict())["peers"] = peers_record(server_round + 1, peers, prepared.view)
            except BelowThresholdError as e:
                log.warning("%s; round %d will share keys before training", e, server_round + 1)
                self.prepared = prepared = None
        for node, content in self._ask(server_round, "secagg_unmask", contents):
            if "unmask" in contents[node]:
                self._read(session, "unmask", node, lambda c=content, n=node: session.receive_shares(
                    n, dict(zip(c["b"]["nodes"], c["b"]["shares"])), dict(zip(c["sk"]["nodes"], c["sk"]["shares"]))))
            if prepared is not None and "peers" in contents[node]:
                self._read(prepared, "share_keys", node, lambda c=content, n=node: self._ciphertexts(prepared, n, c))
        total, examples = session.aggregate()
        record = self.rounds[server_round]
        record["time"]["secagg_unmask"] = time.perf_counter() - start
        record["secure_aggregation"].update({
            "survivors": self._names(survivors), "dropped": self._names(dropped), "threshold": session.threshold,
            "num_examples": examples,
            "rejections": [f"{r.stage}: {self._name(r.node)}: {r.reason}" for r in session.rejections]})
        delta = dequantize_mean(total, examples, self.clip_range, self.quant_bits, dtype=np.float64)
        return apply_update(self._global, delta), MetricRecord({"num-examples": examples})

    @staticmethod
    def _ciphertexts(session: ServerSession, node: int, content: RecordDict) -> bool:
        shares = content["shares"]
        return session.receive_ciphertexts(node, dict(zip(shares["to"], shares["ciphertexts"])))

    @staticmethod
    def _read(session: ServerSession, stage: str, node: int, receive: Callable[[], bool]) -> None:
        """Hand one answer to the session; an answer missing a field is rejected like any bad answer."""
        try:
            receive()
        except (KeyError, TypeError, ValueError, StopIteration) as e:
            session.reject(stage, node, f"malformed answer ({type(e).__name__}: {e})")

    def _name(self, node: int) -> str:
        return self.names.get(node, f"node {node}")

    def _names(self, nodes) -> list[str]:
        return sorted(map(self._name, nodes))

    def _ask(self, server_round: int, stage: str, contents: dict[int, RecordDict]):
        """Send one stage's messages; yield (node, content) of each answer without an error."""
        messages = [Message(content=content, dst_node_id=node, message_type=f"train.{stage}",
                            group_id=str(server_round)) for node, content in contents.items()]
        for reply in self._grid.send_and_receive(messages, timeout=self.stage_timeout):
            if reply.has_error():
                log.warning("secagg round %d: %s: no answer from %s (%s)", server_round, stage,
                            self._name(reply.metadata.src_node_id), reply.error.reason)
            else:
                yield reply.metadata.src_node_id, reply.content


class SecureFedAvg(SecureAggregationMixin, Observed, FedAvg):
    """FedAvg with secure aggregation of the updates."""


class SecureFedProx(SecureAggregationMixin, Observed, FedProx):
    """FedProx local training with secure aggregation of the updates."""
