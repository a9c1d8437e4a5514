"""Does a model learn at all? Central, non-private training on the synthetic hospitals, scored on the
validation split as it goes — how the CNNs' defaults in conf/model/ were chosen.

    python bench/central_learning.py --label resnet18 model=resnet18 [hydra overrides ...] [--epochs 15]

All hospitals' training images pooled, `train_epochs` as a hospital runs it (no DP), the
model's own defaults unless overridden; data seed 7 (the tuning seed: never a reported
seed's test split). Prints the pooled validation AUC and balanced accuracy after epochs
1, 3, 5, 8, 10, 15 and keeps them in bench/results/central_learning.json under `--label`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from src.config import compose_config
from src.data.check import decode_all
from src.data.federation import build_federation
from src.metrics import classification_metrics
from src.models.initial import load_initial_model, save_initial_model
from src.training.loops import local_training_view, predict_samples, resolve_device, train_epochs

RESULTS = Path(__file__).parent / "results" / "central_learning.json"
SEED = 7
SCORED = (1, 3, 5, 8, 10, 15)


def main(label: str, overrides: list[str], epochs: int) -> list[dict]:
    cfg = compose_config(["privacy=none", "logger=none", f"seed={SEED}", "data.root=data/tuning_seed_7", *overrides])
    device = resolve_device("cpu")
    fed = decode_all(build_federation(cfg.data, int(cfg.federation.num_hospitals), SEED), cfg.data)
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        torch.manual_seed(SEED)
        save_initial_model(cfg, len(fed.classes), run)
        model = load_initial_model(cfg, len(fed.classes), run)
        view = local_training_view(model, fed.select(split="train"), cfg.data, int(cfg.federation.batch_size),
                                   SEED, device, run / "features", int(cfg.data.num_workers))
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            loss, _ = train_epochs(view.module, view.loader, 1, float(cfg.federation.lr), device,
                                   optimizer=str(cfg.federation.optimizer), momentum=float(cfg.federation.momentum),
                                   augment=view.augment, precision=str(cfg.federation.precision))
            if epoch in SCORED or epoch == epochs:
                labels, probs = predict_samples(model, fed.select(split="val"), cfg.data, 64, device, run / "features")
                m = classification_metrics(labels, probs, fed.classes)
                curve.append({"epoch": epoch, "loss": loss, "val_auc": m["auc"],
                              "val_balanced_accuracy": m["balanced_accuracy"], "seconds": time.perf_counter() - start})
                print(f"{label}: epoch {epoch} loss {loss:.3f} val AUC {m['auc']:.3f} "
                      f"balanced accuracy {m['balanced_accuracy']:.3f} ({curve[-1]['seconds']:.0f} s)", flush=True)
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs[label] = {"overrides": overrides, "model": cfg.model.name, "lr": float(cfg.federation.lr), "curve": curve}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(runs, indent=1))
    return curve


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    args, rest = parser.parse_known_args(sys.argv[1:])
    main(args.label, rest, args.epochs)
