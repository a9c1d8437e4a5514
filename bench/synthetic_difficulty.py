"""Is the synthetic task learnable but not trivial, and free of shortcuts?

    python bench/synthetic_difficulty.py [--seed 0] [--epochs 15] [--runs 3]

Generates 3 hospitals x 300 images, decodes and resizes them to 64 px with the
project's own preprocessing (`src.data.transforms.radiograph_transforms`, which decodes
with `src.data.images.load_image`), pools the hospitals, splits 70/30 stratified by
hospital and class, and trains the project's small CNN (`model=small_cnn`, a
GroupNorm CNN) on the CPU, averaging `--runs` seeds: a GroupNorm CNN trained from
scratch sometimes sits on a plateau for a few epochs, so one run alone is noisy.
Side by side, on the same split, two baselines that would reveal shortcuts:

- intensity: logistic regression on per-image intensity statistics. A high AUC
  would mean the classes differ in global brightness, not in radiological signs.
- hospital prior: each test image scored with its hospital's training class shares.
  Its AUC is what the intended class-balance differences alone give; the CNN's
  per-hospital AUCs show it does not rely on recognising the hospital.

Writes bench/results/synthetic_difficulty.json.
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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from src.config import compose_config
from src.data.synthetic import CLASSES, generate
from src.data.transforms import radiograph_transforms
from src.models.registry import build_model

RESULTS = Path(__file__).parent / "results" / "synthetic_difficulty.json"
HOSPITALS, PER_HOSPITAL, SIZE = 3, 300, 64


def load(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs (N, 1, 64, 64), labels and hospital indices of every generated file."""
    transform = radiograph_transforms(SIZE)
    images, labels, hospitals = [], [], []
    for h in range(HOSPITALS):
        for label, cls in enumerate(CLASSES):
            for f in sorted((root / f"hospital_{h + 1}" / cls).glob("*.dcm")):
                images.append(transform({"image": str(f)})["image"].numpy())
                labels.append(label)
                hospitals.append(h)
    return np.stack(images), np.array(labels), np.array(hospitals)


def train_cnn(x, y, epochs: int, seed: int) -> nn.Module:
    """The project's CPU-default model (conf/model), plain Adam, batch 32, no augmentation, no DP:
    the centralised upper bound the difficulty is calibrated for."""
    torch.manual_seed(seed)
    model = build_model(compose_config(["model=small_cnn"]).model, num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def intensity_stats(x: np.ndarray) -> np.ndarray:
    """Per-image mean, std and percentiles of the model input."""
    flat = x.reshape(len(x), -1)
    return np.column_stack([flat.mean(1), flat.std(1), np.percentile(flat, [5, 25, 50, 75, 95], axis=1).T])


def auc(y, scores) -> float:
    return float(roc_auc_score(y, scores, multi_class="ovr", average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--runs", type=int, default=3, help="CNN trainings (seeds) averaged: one run varies by +-0.03")
    args = parser.parse_args()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(Path(tmp), HOSPITALS, PER_HOSPITAL, args.seed)
        generation_s = time.perf_counter() - start
        start = time.perf_counter()
        x, y, hosp = load(Path(tmp))
        decode_s = time.perf_counter() - start

    train, test = train_test_split(
        np.arange(len(y)), test_size=0.3, stratify=hosp * len(CLASSES) + y, random_state=args.seed
    )
    yt, ht = y[test], hosp[test]
    runs = []
    start = time.perf_counter()
    for run in range(args.runs):
        model = train_cnn(x[train], y[train], args.epochs, seed=run)
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(x[test])), 1).numpy()
        runs.append(
            {
                "macro_auc": auc(yt, probs),
                "accuracy": float((probs.argmax(1) == yt).mean()),
                **{f"auc_{c}": float(roc_auc_score(yt == i, probs[:, i])) for i, c in enumerate(CLASSES)},
                **{f"auc_hospital_{h + 1}": auc(yt[ht == h], probs[ht == h]) for h in range(HOSPITALS)},
            }
        )
    train_s = (time.perf_counter() - start) / args.runs
    cnn = {k: round(float(np.mean([r[k] for r in runs])), 4) for k in runs[0]}

    stats = intensity_stats(x)
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(stats[train], y[train])
    shares = np.stack([np.bincount(y[train][hosp[train] == h], minlength=len(CLASSES)) for h in range(HOSPITALS)])
    prior = (shares / shares.sum(1, keepdims=True))[ht]

    result = {
        "images": int(len(y)),
        "hospitals": HOSPITALS,
        "image_size": SIZE,
        "seed": args.seed,
        "model": compose_config(["model=small_cnn"]).model.name,
        "epochs": args.epochs,
        "cnn_runs": args.runs,
        "generation_s": round(generation_s, 1),
        "decode_s": round(decode_s, 1),
        "train_s_per_run": round(train_s, 1),
        "cnn_macro_auc": cnn["macro_auc"],
        "cnn_macro_auc_per_run": [round(r["macro_auc"], 4) for r in runs],
        "cnn_accuracy": cnn["accuracy"],
        "cnn_per_class_auc": {c: cnn[f"auc_{c}"] for c in CLASSES},
        "cnn_per_hospital_auc": {f"hospital_{h + 1}": cnn[f"auc_hospital_{h + 1}"] for h in range(HOSPITALS)},
        "intensity_baseline_auc": round(auc(yt, baseline.predict_proba(stats[test])), 4),
        "hospital_prior_auc": round(auc(yt, prior), 4),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
