"""`python run_simulation.py`: a federation of hospitals on one machine (Hydra entry point).

Composes and validates the config once, prepares every hospital's data (generating
the synthetic hospitals on first use), hands each hospital its own manifest, then
runs the Flower ServerApp and one ClientApp per hospital: real SuperLink and
SuperNode processes (`federation.mode=deployment`) or Flower's simulation engine.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from src.config import to_run_config, validate
from src.data.check import decode_all, report
from src.data.federation import build_federation
from src.launch.federation import Hospital, run_federation

PROJECT_DIR = Path(__file__).resolve().parent
log = logging.getLogger("fedcxr")


def prepare_hospitals(cfg: DictConfig, run_dir: Path, console: Console) -> list[Hospital]:
    """Write split.json and one manifest per hospital; return the SuperNodes to start."""
    federation = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed), cfg.data)
    report(federation, console)
    empty = [h for h, splits in federation.counts().items() if not sum(splits["train"])]
    if empty:
        raise ValueError(f"data: no training image at {', '.join(empty)}")
    federation.save(run_dir / "split.json")
    (run_dir / "hospitals").mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(federation.hospitals))
    hospitals = []
    for name in federation.hospitals:
        manifest = run_dir / "hospitals" / f"{name}.json"
        federation.only(name).save(manifest)
        hospitals.append(Hospital(name, {"hospital": name, "manifest": str(manifest), "threads": threads}))
    return hospitals


def final_table(results: dict) -> Table:
    table = Table(title="Final global model (pooled test set) and hospitals (own test sets)")
    for column in ("", "images", "auc", "accuracy", "balanced acc.", "mcc"):
        table.add_column(column, justify="left" if not column else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("global", results["final"]["global"])] + list(results["final"]["hospitals"].items())
    for name, m in rows:
        images = m.get("num_examples") if name == "global" else m.get("num_test_examples")
        table.add_row(name, str(images), *(fmt(m.get(k)) for k in ("auc", "accuracy", "balanced_accuracy", "mcc")))
    return table


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    console = Console()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        hospitals = prepare_hospitals(cfg, run_dir, console)
    except (ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    mode = cfg.federation.mode
    console.print(f"{mode}: {len(hospitals)} hospitals, {cfg.federation.rounds} rounds, run dir {run_dir}")
    outcome = run_federation(
        PROJECT_DIR, run_dir, hospitals, to_run_config(cfg, run_dir), mode=mode,
        timeout_s=float(cfg.federation.round_timeout) * (int(cfg.federation.rounds) + 1),
        on_log_line=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)
        if line.startswith("round ") else None,
    )
    if outcome.failed_hospitals:
        console.print(f"[yellow]hospitals that failed during the run:[/yellow] {', '.join(outcome.failed_hospitals)}")
    results_path = run_dir / "results.json"
    if results_path.exists():
        console.print(final_table(json.loads(results_path.read_text())))
    if outcome.status != "finished:completed":
        console.print(f"[red]run {outcome.status}[/red]: {outcome.details} (log: {outcome.log_path})", highlight=False)
        sys.exit(1)
    console.print(f"results: {results_path}")


if __name__ == "__main__":
    main()
