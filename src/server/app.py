"""The consortium's Flower ServerApp: rounds, central evaluation on the pooled test set, results.

The pooled test set (every hospital's test split) is what a simulation on one
machine can evaluate centrally; it measures the global model the way a reader of
the final report wants it measured.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from src.client.training import make_loader, predict, resolve_device
from src.config import from_run_config
from src.data.federation import Federation
from src.metrics import classification_metrics
from src.models.registry import build_model
from src.server.dashboard import Dashboard
from src.server.report import write_report
from src.server.results import RunRecord, progress_line
from src.strategies.observed import make_strategy

app = ServerApp()
log = logging.getLogger("fedcxr")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    run_dir = Path(str(context.run_config["run-dir"]))
    federation = Federation.load(run_dir / "split.json")
    torch.manual_seed(int(cfg.seed))  # the same seed starts from the same global model
    model = build_model(cfg.model, len(federation.classes))
    pooled_test = make_loader(federation.select(split="test"), cfg.data, False,
                              int(cfg.federation.batch_size), int(cfg.seed))
    device = resolve_device(cfg.device)
    strategy = make_strategy(cfg)
    record = RunRecord(run_dir, cfg, federation.classes)
    rounds = int(cfg.federation.rounds)
    dashboard = Dashboard(cfg, run_dir, federation.classes)

    def evaluate_pooled(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state)
        start = time.perf_counter()
        labels, probs = predict(model, pooled_test, device)
        metrics = classification_metrics(labels, probs, federation.classes)
        observed = strategy.rounds[server_round]
        observed["time"]["evaluate_pooled"] = time.perf_counter() - start
        observed["time"]["total"] = time.perf_counter() - observed["started"]
        entry = record.add_round(server_round, metrics, observed)
        write_report(run_dir, record.save(state), labels, probs)
        dashboard.log_round(entry, labels, probs, run_dir / "roc.png")
        print(progress_line(entry, rounds), flush=True)
        return MetricRecord({k: metrics[k] for k in ("auc", "accuracy") if metrics[k] is not None})

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            timeout=float(cfg.federation.round_timeout),
            train_config=ConfigRecord({"lr": float(cfg.federation.lr)}),
            evaluate_fn=evaluate_pooled,
        )
    finally:
        dashboard.finish()
