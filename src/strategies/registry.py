"""The strategy a run's config names: Flower's FedAvg or FedProx, observed, or either under secure aggregation."""

from __future__ import annotations

from src.strategies.observed import ObservedFedAvg, ObservedFedProx
from src.strategies.secure import SecureFedAvg, SecureFedProx


def make_strategy(cfg):
    """The configured strategy; a round needs `federation.min_hospitals` answers."""
    n = int(cfg.federation.min_hospitals)
    common = dict(fraction_train=float(cfg.federation.fraction), fraction_evaluate=1.0,
                  min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n)
    if cfg.strategy.name == "fedavg":
        return ObservedFedAvg(**common)
    if cfg.strategy.name == "fedprox":
        return ObservedFedProx(proximal_mu=float(cfg.strategy.proximal_mu), **common)
    if cfg.strategy.name == "secagg":
        s = cfg.strategy
        secure = dict(clip_range=float(s.clip_range), quant_bits=int(s.quant_bits), num_shares=s.num_shares,
                      threshold=s.threshold, stage_timeout=float(cfg.federation.round_timeout),
                      num_rounds=int(cfg.federation.rounds), min_survivors=n, **common)
        if float(s.proximal_mu) > 0:
            return SecureFedProx(proximal_mu=float(s.proximal_mu), **secure)
        return SecureFedAvg(**secure)
    raise ValueError(f"strategy.name: unknown strategy {cfg.strategy.name!r}; expected fedavg, fedprox or secagg")
