"""Flower's FedAvg and FedProx, observed: per-hospital metrics and round timings.

Flower's strategies average the hospitals' metrics into one record; a consortium
also wants each hospital's own numbers and where a round's time went, so this
mixin keeps them (hospital names come with each reply) without changing how the
strategy samples, aggregates or weights (by training examples, `num-examples`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from flwr.serverapp.strategy import FedAvg, FedProx


def trained(msg) -> bool:
    """A hospital that trained this round (not an error, not a declined round)."""
    return not msg.has_error() and "declined" not in msg.content["hospital"]


class Observed:
    """Mixin for a `flwr.serverapp.strategy` Strategy: records what each round did."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rounds: dict[int, dict] = defaultdict(lambda: {"hospitals": {}, "time": {}})
        self.names: dict[int, str] = {}  # node id -> hospital, learnt from the hospitals' answers
        self.silent: set[int] = set()  # nodes that did not answer the last round's training

    def _hospital(self, msg) -> str:
        name = self.names[msg.metadata.src_node_id] = str(msg.content["hospital"]["name"])
        return name

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds[server_round]["started"] = time.perf_counter()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.rounds[server_round]["asked"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        record = self.rounds[server_round]
        record["time"]["train"] = time.perf_counter() - record["started"]
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        # an error reply made by the SuperLink for a vanished node names the SuperLink as its source
        self.silent = {node for node in record.pop("asked") if node not in answered}
        record["failed"] = [self.names.get(node, f"node {node}") for node in sorted(self.silent)]
        for msg in replies:
            if not msg.has_error():
                hospital = record["hospitals"].setdefault(self._hospital(msg), {})
                hospital["trained"] = trained(msg)  # who took part is visible to the server anyway
                hospital.update({k.replace("-", "_"): v for k, v in msg.content["metrics"].items()})
                if "privacy" in msg.content:
                    hospital["privacy"] = dict(msg.content["privacy"])
                if "declined" in msg.content["hospital"]:
                    hospital["declined"] = str(msg.content["hospital"]["declined"])
        start = time.perf_counter()
        result = self.aggregate_trained(server_round, [m for m in replies if not m.has_error()])
        record["time"]["aggregate"] = time.perf_counter() - start
        return result

    def aggregate_trained(self, server_round, answers):
        """The strategy's own aggregation over the hospitals that trained (a declined answer has no update)."""
        return super().aggregate_train(server_round, [m for m in answers if trained(m)])

    def configure_evaluate(self, server_round, arrays, config, grid):
        """Flower's, less the hospitals that did not answer (or were left out of) the round's training:
        the SuperLink notices a dead SuperNode only once its heartbeats stop (a minute), and asking
        it would hold the evaluation up until the round timeout."""
        return [m for m in super().configure_evaluate(server_round, arrays, config, grid)
                if m.metadata.dst_node_id not in self.silent]

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        self.record_evaluation(server_round, replies, "metrics")
        return super().aggregate_evaluate(server_round, replies)

    def record_evaluation(self, server_round, replies, record: str) -> None:
        """Each hospital's test metrics of round `server_round`'s model, from `record` of its answer
        (an evaluate answer's metrics, or the evaluation a train answer of the next round carries)."""
        for msg in replies:
            if not msg.has_error() and record in msg.content:
                evaluation = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in msg.content[record].items()}
                evaluation["num_test_examples"] = evaluation.pop("num-examples")
                self.rounds[server_round]["hospitals"].setdefault(self._hospital(msg), {}).update(evaluation)


class ObservedFedAvg(Observed, FedAvg):
    pass


class ObservedFedProx(Observed, FedProx):
    pass
