"""The ServerApp's round loop: Flower's `Strategy.start`, made resumable and strict.

`Strategy.start` always numbers rounds from 1, and it goes on with whatever answers
came back, even none. A consortium needs an interrupted run to continue at its next
round (`resume=`), and must never publish a model averaged over fewer hospitals than
it agreed on (`federation.min_hospitals`). So the loop is ours; each step of a round
(`configure_train`, `aggregate_train`, `configure_evaluate`, `aggregate_evaluate`)
is the strategy's own, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from src.strategies.observed import trained
from src.strategies.secagg import BelowThresholdError


class RoundFailed(RuntimeError):
    """Too few hospitals answered a round; the global model stays as it was."""


def run_rounds(
    strategy,
    grid: Grid,
    arrays: ArrayRecord,
    rounds: range,
    min_answers: int,
    timeout: float,
    train_config: ConfigRecord,
    on_round: Callable[[int, ArrayRecord], None],
) -> ArrayRecord:
    """Train, aggregate and evaluate each round of `rounds`; `on_round` checkpoints and reports it."""
    for server_round in rounds:
        try:
            replies = list(grid.send_and_receive(
                strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout))
            aggregated, _ = strategy.aggregate_train(server_round, replies)  # records every answer
        except BelowThresholdError as e:
            raise RoundFailed(f"round {server_round}: {e}; the global model stays at round {server_round - 1}") from e
        answered = sum(map(trained, replies))
        if answered < min_answers:
            declined = [f"{m.content['hospital']['name']}: {m.content['hospital']['declined']}"
                        for m in replies if not m.has_error() and not trained(m)]
            raise RoundFailed(
                f"round {server_round}: {answered} of {len(replies)} hospitals trained, at least "
                f"{min_answers} needed (federation.min_hospitals); the global model stays at round "
                f"{server_round - 1}" + "".join(f"; declined by {d}" for d in declined))
        arrays = aggregated
        strategy.aggregate_evaluate(server_round, grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid), timeout=timeout))
        on_round(server_round, arrays)
    return arrays
