"""Where the default run's wall time goes: local training vs everything else.

    python bench/round_overhead.py [hydra overrides, e.g. federation.mode=simulation]

Runs the default federation (`python run_simulation.py`'s config, `logger=none`) on
the synthetic hospitals, prepared beforehand so that data generation is not counted,
and splits its wall time into: the initial model and the hospitals' front-end features
(which the launcher computes while it prepares their data), starting the SuperLink and
SuperNodes, submitting the run, each round's local training (the slowest hospital: hospitals train in parallel,
so it is the round's critical path), the rest of the round (message transport to and from the hospitals' warm workers,
model transport, the hospitals' evaluation of the previous round's model, which rides
on the train message, aggregation, the pooled evaluation, the wait for the report's
plots at its end), the hospitals' evaluation of
the last model, and teardown.
Everything that is not local training is overhead. Each measurement is kept in
bench/results/round_overhead.json under a label (`--label`, default "default"), beside the
earlier ones, so that before and after, or FedAvg and secure aggregation, sit in one file.

    python bench/round_overhead.py --label fedavg strategy=fedavg
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from hydra.utils import to_absolute_path
from rich.console import Console

from src.config import compose_config, to_run_config, validate
from src.launch.federation import run_federation
from src.launch.hospitals import cache_front_end_features, hospital_nodes, prepare_federation
from src.models.initial import save_initial_model

RESULTS = Path(__file__).parent / "results" / "round_overhead.json"
PROJECT_DIR = Path(__file__).resolve().parent.parent  # the Flower app (pyproject.toml)


def main(label: str, overrides: list[str]) -> dict:
    cfg = compose_config(["logger=none", *overrides])
    validate(cfg)
    cfg.data.root = to_absolute_path(str(cfg.data.root))
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="round_overhead_") as tmp:
        run_dir = Path(tmp)
        start = time.perf_counter()
        federation = prepare_federation(cfg, run_dir, console)
        hospitals = hospital_nodes(cfg, federation, run_dir)
        data_s = time.perf_counter() - start
        start = time.perf_counter()  # from here on counted: the launcher's initial model and cached features
        save_initial_model(cfg, len(federation.classes), run_dir)
        cache_front_end_features(cfg, federation, run_dir)
        front_end_s = time.perf_counter() - start
        outcome = run_federation(PROJECT_DIR, run_dir, hospitals, to_run_config(cfg, run_dir),
                                 mode=cfg.federation.mode, timeout_s=1800)
        wall = time.perf_counter() - start
        if not outcome.ok:
            sys.exit(f"the federation failed: {outcome.status} {outcome.details}")
        results = json.loads((run_dir / "results.json").read_text())
        # training times stay at the hospitals (under secure aggregation the server never sees them):
        # this benchmark, on the same machine, reads each hospital's own training log
        local_seconds: dict[int, list[float]] = {}
        for log in (run_dir / "hospitals").glob("*.training.jsonl"):
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                local_seconds.setdefault(entry["round"], []).append(entry["train_seconds"])

    rounds = []
    for r in results["rounds"]:
        seconds = local_seconds[r["round"]]
        t = r["time"]
        rounds.append({"round": r["round"], "total_s": t["total"], "train_phase_s": t["train"],
                       "local_training_max_s": max(seconds), "local_training_mean_s": sum(seconds) / len(seconds),
                       "aggregate_s": t["aggregate"], "evaluate_pooled_s": t["evaluate_pooled"],
                       "report_wait_s": t["report_wait"], "auc": r["global"]["auc"]})
    local = sum(r["local_training_max_s"] for r in rounds)
    in_rounds = sum(r["total_s"] for r in rounds)
    report = {
        "overrides": overrides,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "config": {k: results["config"]["federation"][k] for k in
                   ("mode", "num_hospitals", "rounds", "local_epochs", "batch_size")}
        | {"model": cfg.model.name, "image_size": int(cfg.data.image_size),
           "images_per_hospital": int(cfg.data.images_per_hospital)},
        "data_preparation_s": data_s,
        "initial_model_and_features_s": front_end_s,
        "wall_s": wall,
        "launcher_s": outcome.timings,
        "rounds": rounds,
        "evaluate_last_model_s": results["rounds"][-1]["time"]["evaluate_hospitals"],
        "local_training_s": local,
        "overhead_share": 1 - local / wall,
        "overhead_share_within_rounds": 1 - local / in_rounds,
        "final_auc": results["final"]["global"]["auc"],
    }
    print(f"{report['config']}")
    print(f"data preparation (not counted): {data_s:.1f} s; wall time {wall:.1f} s, of which the initial model and "
          f"the hospitals' cached front-end features {front_end_s:.1f} s")
    print("launcher: " + ", ".join(f"{k} {v:.1f} s" for k, v in outcome.timings.items()))
    print(f"{'round':>5} {'total':>7} {'train phase':>11} {'local max':>9} {'local mean':>10} {'aggregate':>9} "
          f"{'pooled eval':>11}")
    for r in rounds:
        print(f"{r['round']:>5} {r['total_s']:>7.1f} {r['train_phase_s']:>11.1f} {r['local_training_max_s']:>9.1f} "
              f"{r['local_training_mean_s']:>10.1f} {r['aggregate_s']:>9.2f} {r['evaluate_pooled_s']:>11.1f}")
    print(f"the hospitals' evaluation of the last model: {report['evaluate_last_model_s']:.1f} s")
    print(f"local training {local:.1f} s of {wall:.1f} s: overhead {report['overhead_share']:.0%} of the wall time, "
          f"{report['overhead_share_within_rounds']:.0%} within the rounds")
    RESULTS.parent.mkdir(exist_ok=True)
    runs = json.loads(RESULTS.read_text()).get("runs", {}) if RESULTS.exists() else {}
    runs[label] = report
    out = {"runs": runs, "secure_aggregation_added_to_rounds": secure_aggregation_cost(runs)}
    RESULTS.write_text(json.dumps(out, indent=1))
    twin = _twin(runs, label)
    if twin is not None:  # this run's twin, whose own nearest twin may be another run
        secure, plain = (label, twin) if _strategy(runs[label]) == "secagg" else (twin, label)
        print(f"secure aggregation adds {_added(runs, secure, plain):.0%} to the rounds of {secure!r} "
              f"against {plain!r}")
    return report


def _strategy(run: dict) -> str:
    return next((o.split("=", 1)[1] for o in run["overrides"] if o.startswith("strategy=")), "secagg")


def _twin(runs: dict, label: str) -> str | None:
    """The run of the same config and overrides but the other strategy (secure aggregation or FedAvg), on the same
    machine, measured nearest to `label`, the next one on a tie (each pair is measured one after the other, the
    secure one first)."""
    run, labels = runs[label], list(runs)
    rest = sorted(o for o in run["overrides"] if not o.startswith("strategy="))
    other = "fedavg" if _strategy(run) == "secagg" else "secagg"
    twins = [k for k, r in runs.items() if _strategy(r) == other and r["config"] == run["config"]
             and r["machine"] == run["machine"]
             and sorted(o for o in r["overrides"] if not o.startswith("strategy=")) == rest]
    gap = {k: labels.index(k) - labels.index(label) for k in twins}
    return min(twins, key=lambda k: (abs(gap[k]), gap[k] < 0), default=None)


def secure_aggregation_cost(runs: dict) -> dict:
    """What secure aggregation adds to the rounds' total time (the first round's key setup included), for each
    secure run against its FedAvg twin (`_twin`): `"<secure label> / <FedAvg label>": added share`."""
    cost = {}
    for label, run in runs.items():
        twin = _twin(runs, label) if _strategy(run) == "secagg" else None
        if twin is not None:
            cost[f"{label} / {twin}"] = _added(runs, label, twin)
    return cost


def _added(runs: dict, secure: str, plain: str) -> float:
    """The secure run's rounds' total time over the FedAvg run's, less 1."""
    return sum(r["total_s"] for r in runs[secure]["rounds"]) / sum(r["total_s"] for r in runs[plain]["rounds"]) - 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Any other argument is a Hydra override of the run's config.")
    parser.add_argument("--label", default="default", help="where in the JSON this measurement goes")
    args, overrides = parser.parse_known_args()
    main(args.label, overrides)
