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


class Observed:
    """Mixin for a `flwr.serverapp.strategy` Strategy: records what each round did."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rounds: dict[int, dict] = defaultdict(lambda: {"hospitals": {}, "time": {}})

    @staticmethod
    def _hospital(msg) -> str:
        return str(msg.content["hospital"]["name"])

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds[server_round]["started"] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        record = self.rounds[server_round]
        record["time"]["train"] = time.perf_counter() - record["started"]
        record["failed"] = [str(m.metadata.src_node_id) for m in replies if m.has_error()]
        for msg in replies:
            if not msg.has_error():
                metrics = msg.content["metrics"]
                record["hospitals"].setdefault(self._hospital(msg), {}).update(
                    {"num_examples": int(metrics["num-examples"]), "train_loss": float(metrics["train_loss"])})
        start = time.perf_counter()
        result = super().aggregate_train(server_round, replies)
        record["time"]["aggregate"] = time.perf_counter() - start
        return result

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                evaluation = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in msg.content["metrics"].items()}
                evaluation["num_test_examples"] = evaluation.pop("num-examples")
                self.rounds[server_round]["hospitals"].setdefault(self._hospital(msg), {}).update(evaluation)
        return super().aggregate_evaluate(server_round, replies)


class ObservedFedAvg(Observed, FedAvg):
    pass


class ObservedFedProx(Observed, FedProx):
    pass


def make_strategy(cfg):
    """The configured strategy; a round needs `federation.min_hospitals` answers."""
    n = int(cfg.federation.min_hospitals)
    common = dict(fraction_train=float(cfg.federation.fraction), fraction_evaluate=1.0,
                  min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n)
    if cfg.strategy.name == "fedavg":
        return ObservedFedAvg(**common)
    if cfg.strategy.name == "fedprox":
        return ObservedFedProx(proximal_mu=float(cfg.strategy.proximal_mu), **common)
    raise ValueError(f"strategy.name: unknown strategy {cfg.strategy.name!r}; expected fedavg or fedprox")
