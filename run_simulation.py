"""`python run_simulation.py`: a federation of hospitals on one machine (Hydra entry point).

Composes and validates the config once, prepares every hospital's data (generating
the synthetic hospitals on first use), hands each hospital its own manifest, then
runs the Flower ServerApp and one ClientApp per hospital: real SuperLink and
SuperNode processes (`federation.mode=deployment`) or Flower's simulation engine;
with `launch=false` it prepares the run (with a copy of the app's own files) and prints
the `flwr run .` commands instead.
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from src.config import to_run_config, validate
from src.launch.configs import Hospital
from src.launch.flwr_run import commands, stage_app, write_flwr_files
from src.server.announce import ANNOUNCE

PROJECT_DIR = Path(__file__).resolve().parent
# At exit the interpreter's last garbage collection walks every object torch, Opacus and scikit-learn
# made (~0.9 s of CPU per process); by then nothing is left that needs collecting.
atexit.register(gc.freeze)


RESUMABLE = ("federation.rounds", "federation.mode", "federation.round_timeout", "federation.min_hospitals",
             "logger", "device", "hospital", "resume", "launch", "hydra")


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of the run in `resume`, with the few command-line overrides a resumed run may change.

    Anything that shapes the model or the data (model, data, seed, lr, ...) is the
    resumed run's own; changing it half-way would make a different experiment.
    """
    saved = Path(str(cfg.resume)) / "config.yaml"
    if not saved.exists():
        raise ValueError(f"resume: {cfg.resume} is not a fedcxr run directory (no config.yaml)")
    resumed = OmegaConf.load(saved)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not any(key == k or key.startswith(k + ".") for k in RESUMABLE):
            raise ValueError(f"resume: {key} cannot change when resuming a run; "
                             f"only {', '.join(RESUMABLE[:-2])} can")
        if key != "resume":
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), merge=False)
    resumed.resume = str(Path(str(cfg.resume)).resolve())
    return resumed


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


def prepare_run(cfg: DictConfig, run_dir: Path, console: Console) -> tuple[DictConfig, Path, list[Hospital]]:
    """Everything that can be refused is checked here, before any process starts."""
    if cfg.resume:
        cfg = resumed_config(cfg, list(HydraConfig.get().overrides.task))
        run_dir = Path(cfg.resume)
    validate(cfg)
    # torch, MONAI and Opacus (seconds to import) only for a config that passed: a bad key is refused at once
    from src.training.privacy import plan
    from src.launch.hospitals import cache_front_end_features, hospital_nodes, hospital_policy, prepare_federation
    from src.models.initial import save_initial_model
    from src.server.readers import load_reads
    from src.strategies.secure import check_secagg

    cfg.data.root = to_absolute_path(str(cfg.data.root))  # the apps run in other working directories
    if cfg.eval.reader_csv:
        cfg.eval.reader_csv = to_absolute_path(str(cfg.eval.reader_csv))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    hospital_policy(cfg)  # a graph policy the run's own graph cannot meet is refused before any data is decoded
    federation = prepare_federation(cfg, run_dir, console)
    if cfg.eval.reader_csv:
        load_reads(cfg.eval.reader_csv, federation.select(split="test"), federation.classes, cfg.data.root)
    train_sizes = [sum(splits["train"]) for splits in federation.counts().values()]
    if cfg.privacy.name == "dp":  # δ < 1/n and a reachable target ε, for every hospital's n
        for n in train_sizes:
            plan(cfg.privacy, cfg.federation, n)
    if cfg.strategy.name == "secagg":  # the sum over all hospitals must not wrap around the modulus
        check_secagg(cfg.strategy, max(train_sizes), len(train_sizes))
    save_initial_model(cfg, len(federation.classes), run_dir)
    cache_front_end_features(cfg, federation, run_dir)
    return cfg, run_dir, hospital_nodes(cfg, federation, run_dir)


def run_timeout(cfg: DictConfig) -> float:
    """The longest a healthy run can take: every exchange of every round waiting out `round_timeout` for
    a vanished hospital (secure aggregation's first round has five exchanges, the others three), and the
    last evaluation."""
    exchanges = 5 + 3 * (int(cfg.federation.rounds) - 1) if cfg.strategy.name == "secagg" else int(cfg.federation.rounds)
    return float(cfg.federation.round_timeout) * (exchanges + 1)


def add_baselines(cfg: DictConfig, run_dir: Path, results: dict, console: Console) -> None:
    """Centralized and local-only models with the federation's budget, beside it in report.md."""
    from src.baselines import baselines_markdown, run_baselines  # torch and MONAI: only when asked for

    section = baselines_markdown(results, run_baselines(cfg, run_dir))
    with open(run_dir / "report.md", "a") as report_md:
        report_md.write("\n" + section)
    console.print(Markdown(section))


def add_audit(run_dir: Path, console: Console) -> None:
    """The gradient-inversion audit of the run's model (src/attacks/invert.py), in report.md and attack.json."""
    from src.attacks.invert import SCENARIOS, audit, markdown

    console.print("attack: inverting updates of the run's model (gradient-inversion audit)")
    console.print(Markdown(markdown(audit(run_dir, list(SCENARIOS)))))


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    console = Console()
    try:
        cfg, run_dir, hospitals = prepare_run(cfg, Path(HydraConfig.get().runtime.output_dir), console)
    except (ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    mode = cfg.federation.mode
    if not cfg.launch:
        write_flwr_files(run_dir, to_run_config(cfg, run_dir))
        console.print(f"prepared {run_dir}; to run it with Flower's CLI ({mode}):")
        for line in commands(stage_app(PROJECT_DIR, run_dir), run_dir, hospitals, mode):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    from src.launch.federation import run_federation  # Flower's CLI modules: only for a run that starts

    console.print(f"{mode}: {len(hospitals)} hospitals, {cfg.federation.rounds} rounds, run dir {run_dir}")
    outcome = run_federation(
        PROJECT_DIR, run_dir, hospitals, to_run_config(cfg, run_dir), mode=mode,
        timeout_s=run_timeout(cfg), simulation_cpus=int(cfg.federation.simulation_cpus),
        on_log_line=lambda line: console.print(line[len(ANNOUNCE):], highlight=False, markup=False,
                                               soft_wrap=True) if line.startswith(ANNOUNCE) else None,
    )
    if outcome.failed_hospitals:
        console.print(f"[yellow]hospitals that failed during the run:[/yellow] {', '.join(outcome.failed_hospitals)}")
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    if results and results["rounds"]:
        console.print(final_table(results))
    if outcome.status != "finished:completed":
        console.print(f"[red]run {outcome.status}[/red]: {outcome.details} (log: {outcome.log_path})", highlight=False)
        sys.exit(1)
    if cfg.baselines and results:
        add_baselines(cfg, run_dir, results, console)
    if cfg.attack and results:
        add_audit(run_dir, console)
    console.print(f"results: {results_path}")


if __name__ == "__main__":
    main()
