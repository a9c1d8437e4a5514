"""Does the private federation diagnose? Pooled ROC-AUC and balanced accuracy, side by side.

    python bench/utility.py [--seeds 42 1 2] [--epsilons none 1 2 8] [--models scatter_linear small_cnn]
    python bench/utility.py --quick      # one seed, scatter_linear, none and ε = 8

For each data seed: the synthetic hospitals of the default run (3 × `data.images_per_hospital`,
the project's own decoding, split and cache), then for each model and privacy setting
three models trained with the same budget (`rounds × local_epochs` epochs, the model's
own training defaults from conf/model/, the same initial model with its public
reference statistics):

- federated: FedAvg over the hospitals, in process (each hospital's local training is
  the ClientApp's own code: `local_training_view` + `train_epochs`, DP-SGD planned per
  hospital with `plan`; secure aggregation gives this mean up to 3·10⁻⁸ per weight,
  see tests/test_run_simulation.py), no Flower processes, so that many settings fit;
- centralized: one model on the pooled training images (`src/baselines.py`);
- local-only: each hospital alone (`src/baselines.py`), pooled test set, mean over hospitals.

Every number is on the pooled test set; nothing is tuned on it (the training defaults
were chosen on data seed 7, which is not among the reported seeds). Writes
bench/results/utility.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console

from src.baselines import run_baselines
from src.config import compose_config
from src.data.check import decode_all
from src.data.federation import build_federation
from src.metrics import classification_metrics
from src.models.initial import save_initial_model
from src.models.registry import build_model
from src.training.loops import local_training_view, predict_samples, train_epochs
from src.training.privacy import plan

RESULTS = Path(__file__).parent / "results" / "utility.json"
DATA = Path(__file__).resolve().parent.parent / "data" / "bench_utility"


def summary(metrics: dict) -> dict:
    return {"auc": metrics["auc"], "balanced_accuracy": metrics["balanced_accuracy"]}


def federated(cfg, federation, run_dir: Path) -> dict:
    """FedAvg weighted by training images, every hospital every round, the ClientApp's local training."""
    classes = federation.classes
    model = build_model(cfg.model, len(classes))
    model.load_state_dict(torch.load(run_dir / "initial_model.pt", weights_only=True))
    for server_round in range(1, int(cfg.federation.rounds) + 1):
        total, weight = None, 0
        for hospital in federation.hospitals:
            samples = federation.select(hospital, "train")
            local = build_model(cfg.model, len(classes))
            local.load_state_dict(model.state_dict())
            view = local_training_view(local, samples, cfg.data, int(cfg.federation.batch_size),
                                       int(cfg.seed) + server_round, "cpu", DATA / "features")
            dp = plan(cfg.privacy, cfg.federation, len(samples)) if cfg.privacy.name == "dp" else None
            train_epochs(view.module, view.loader, int(cfg.federation.local_epochs), float(cfg.federation.lr), "cpu",
                         dp=dp, optimizer=str(cfg.federation.optimizer), momentum=float(cfg.federation.momentum),
                         augment=view.augment, precision=str(cfg.federation.precision))
            state = {k: v.double() * len(samples) for k, v in local.state_dict().items()}
            total = state if total is None else {k: total[k] + state[k] for k in total}
            weight += len(samples)
        model.load_state_dict({k: (v / weight).to(model.state_dict()[k].dtype) for k, v in total.items()})
    labels, probs = predict_samples(model, federation.select(split="test"), cfg.data, 256, "cpu", DATA / "features")
    return summary(classification_metrics(labels, probs, classes))


def one_setting(model: str, epsilon: str, seed: int, quick: bool, extra: list[str]) -> dict:
    overrides = [f"model={model}", f"seed={seed}", f"data.root={DATA / f'seed_{seed}'}",
                 f"data.cache_dir={DATA / 'cache'}", "logger=none", *extra]
    overrides += ["privacy=none"] if epsilon == "none" else [f"privacy.target_epsilon={epsilon}"]
    cfg = compose_config(overrides)
    OmegaConf.resolve(cfg)
    federation = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, seed), cfg.data)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        federation.save(run_dir / "split.json")
        (DATA / "features").mkdir(parents=True, exist_ok=True)
        (run_dir / "features").symlink_to(DATA / "features")  # the baselines' feature cache: shared across settings
        save_initial_model(cfg, len(federation.classes), run_dir)
        row = {"model": model, "epsilon": epsilon, "seed": seed, "federated": federated(cfg, federation, run_dir)}
        if not quick:
            baselines = run_baselines(cfg, run_dir)
            row["centralized"] = summary(baselines["centralized"]["pooled"])
            local = [summary(v["pooled"]) for v in baselines["local"].values()]
            row["local_only_mean"] = {k: float(np.mean([m[k] for m in local if m[k] is not None])) for k in local[0]}
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--epsilons", nargs="+", default=["none", "1", "2", "8"])
    parser.add_argument("--models", nargs="+", default=["scatter_linear"])
    parser.add_argument("--quick", action="store_true", help="one seed, none and ε = 8, federated only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every setting, e.g. federation.lr=0.1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epsilons = args.seeds[:1], ["none", "8"]
    console, rows, start = Console(stderr=True), [], time.perf_counter()
    for model in args.models:
        for epsilon in args.epsilons:
            for seed in args.seeds:
                rows.append(one_setting(model, epsilon, seed, args.quick, args.set))
                r = rows[-1]
                console.print(f"{model} ε={epsilon} seed {seed}: federated AUC {r['federated']['auc']:.3f}"
                              + (f", centralized {r['centralized']['auc']:.3f}, local-only "
                                 f"{r['local_only_mean']['auc']:.3f}" if "centralized" in r else "")
                              + f" ({r['seconds']:.0f} s)")
    table = []
    print(f"{'model':15s} {'ε':>5s} {'federated AUC':>14s} {'bal. acc.':>9s} {'centralized':>11s} "
          f"{'local-only':>10s}   (mean ± sd over seeds {args.seeds})")
    for model in args.models:
        for epsilon in args.epsilons:
            group = [r for r in rows if r["model"] == model and r["epsilon"] == epsilon]

            def stat(key, metric):
                values = [r[key][metric] for r in group if key in r and r[key][metric] is not None]
                return (float(np.mean(values)), float(np.std(values))) if values else (None, None)

            entry = {"model": model, "epsilon": epsilon, **{f"{k}_{m}": stat(k, m) for k in
                     ("federated", "centralized", "local_only_mean") for m in ("auc", "balanced_accuracy")}}
            table.append(entry)
            fmt = lambda v: "    –    " if v[0] is None else f"{v[0]:.3f}±{v[1]:.3f}"  # noqa: E731
            print(f"{model:15s} {epsilon:>5s} {fmt(entry['federated_auc']):>14s} "
                  f"{fmt(entry['federated_balanced_accuracy']):>9s} {fmt(entry['centralized_auc']):>11s} "
                  f"{fmt(entry['local_only_mean_auc']):>10s}")
    report = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads()}, "overrides": args.set,
              "wall_s": time.perf_counter() - start, "table": table, "runs": rows}
    if not args.quick:
        args.out.parent.mkdir(exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
