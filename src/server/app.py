"""The consortium's Flower ServerApp: rounds, central evaluation on the pooled test set, results.

The pooled test set (every hospital's test split) is what a simulation on one
machine can evaluate centrally; it measures the global model the way a reader of
the final report wants it measured.
"""

from __future__ import annotations

import copy
import importlib
import threading
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from src.config import from_run_config
from src.data.federation import Federation
from src.metrics import classification_metrics
from src.models.initial import load_initial_model
from src.models.wire import load_record, to_record
from src.server.announce import announce
from src.server.background import Background
from src.server.dashboard import Dashboard
from src.server.polling import poll_faster
from src.server.readers import load_reads, score_reads
from src.server.report import write_report
from src.server.results import RunRecord, progress_line
from src.server.rounds import RoundFailed, run_rounds
from src.strategies.registry import make_strategy
from src.training.loops import predict_samples, resolve_device

app = ServerApp()


def import_image_pipeline_ahead() -> None:
    """Import MONAI's data pipeline (~2 s of CPU) in a thread, while round 1's hospitals train, for a model
    that reads images: the first pooled evaluation would otherwise import it after their training, alone on
    the round's critical path. Not a daemon: the process never exits in the middle of the import. A failed
    import is raised again, in the main thread, by the evaluation's own."""
    threading.Thread(target=importlib.import_module, args=("monai.data",), name="import-monai").start()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    grid = poll_faster(grid)
    run_dir = Path(str(context.run_config["run-dir"]))
    federation = Federation.load(run_dir / "split.json")
    model = load_initial_model(cfg, len(federation.classes), run_dir)
    record = RunRecord(run_dir, cfg, federation.classes)
    checkpoint = record.resume() if cfg.resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
    first, rounds = (checkpoint["round"] if checkpoint else 0) + 1, int(cfg.federation.rounds)
    # a run that stopped once its last round was saved (its report failed) evaluates and draws that round again
    redraw = checkpoint is not None and record.stopped_before is not None and checkpoint["round"] >= rounds
    unevaluated = checkpoint["round"] if checkpoint and (redraw or not record.evaluated(checkpoint["round"])) else None
    if first > rounds and unevaluated is None:
        announce(f"nothing to do: all {rounds} rounds of {run_dir} are done")
        return
    if checkpoint is not None:
        announce(f"resuming {run_dir} at round {first}/{rounds}")
    if getattr(model, "front_end", None) is None:
        import_image_pipeline_ahead()
    test_samples = federation.select(split="test")

    def evaluate_pooled():
        return predict_samples(model, test_samples, cfg.data, int(cfg.federation.batch_size), device,
                               cache_dir=run_dir / "features")
    reads = (load_reads(cfg.eval.reader_csv, test_samples, federation.classes, cfg.data.root)
             if cfg.eval.reader_csv else None)
    device = resolve_device(cfg.device)
    strategy = make_strategy(cfg)
    dashboard = Dashboard(cfg, run_dir, federation.classes)
    background = Background()  # the report's plots and the dashboard, off the round's path

    latest: dict = {}  # the newest model's pooled predictions, for the report once hospitals have evaluated it

    def finish_round(server_round: int, arrays: ArrayRecord) -> None:
        """Evaluate on the pooled test set, checkpoint (the whole model: the round's arrays are its trained part)."""
        load_record(model, arrays)
        state = model.state_dict()
        start = time.perf_counter()
        labels, probs = evaluate_pooled()
        metrics = classification_metrics(labels, probs, federation.classes)
        observed = strategy.rounds[server_round]
        observed["time"]["evaluate_pooled"] = time.perf_counter() - start
        observed["time"]["total"] = time.perf_counter() - observed["started"]
        entry = record.add_round(server_round, metrics, observed)
        if reads is not None:
            entry["reader"] = score_reads(reads, labels, probs, federation.classes)
        record.save(state)
        latest.update(round=server_round, state=state, labels=labels, probs=probs)
        announce(progress_line(entry, rounds, time.perf_counter() - started, server_round - first + 1))
        start = time.perf_counter()
        settle_reports()  # before the next round asks any hospital to spend privacy budget
        waited = time.perf_counter() - start  # in the round's total; saved with its evaluation (or the stop)
        entry["time"].update(report_wait=waited, total=entry["time"]["total"] + waited)

    def finish_evaluation(server_round: int) -> None:
        """The hospitals' evaluation joins the round's entry, saved now; report and dashboard in the background."""
        if latest.get("round") != server_round:  # a resumed run: the checkpoint's model is loaded
            labels, probs = evaluate_pooled()
            latest.update(round=server_round, state=model.state_dict(), labels=labels, probs=probs)
        entry = record.add_evaluation(server_round, strategy.rounds[server_round])
        saved, entry = copy.deepcopy((record.save(latest["state"]), entry))  # the loop goes on changing both
        background.submit(draw, saved, entry, latest["labels"], latest["probs"])

    def draw(saved: dict, entry: dict, labels, probs) -> None:
        """The report and the round's dashboard entry, whose ROC is the report's plot."""
        write_report(run_dir, saved, labels, probs)
        dashboard.log_round(entry, labels, probs, run_dir / "roc.png")

    def settle_reports() -> None:
        """The reports drawn so far; a failed one stops the run, its rounds saved, like a failed round."""
        try:
            background.settle()
        except Exception as e:
            raise RoundFailed(f"the report could not be drawn ({type(e).__name__}: {e}); the rounds "
                              f"up to {record.rounds[-1]['round']} are saved") from e

    started = time.perf_counter()
    try:
        with background:
            run_rounds(strategy, grid, to_record(model), range(first, rounds + 1),
                       min_answers=int(cfg.federation.min_hospitals), timeout=float(cfg.federation.round_timeout),
                       train_config=ConfigRecord({"lr": float(cfg.federation.lr)}), on_round=finish_round,
                       on_evaluated=finish_evaluation, unevaluated=unevaluated)
            settle_reports()
    except RoundFailed as e:
        record.stop(str(e))
        announce(f"run stopped: {e}; resume with resume={run_dir}")
        raise
    finally:
        dashboard.finish()
