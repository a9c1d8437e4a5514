"""The gradient-inversion audit's scenario table for a run, with its cost.

    python bench/inversion.py <run dir>      # e.g. a default `python run_simulation.py` run

Runs every scenario of `python -m src.attacks.invert` (it also writes attack.json, the
montages and the report section into the run directory) and writes the table, with
iterations and seconds per scenario and the total wall time, to bench/results/inversion.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from src.attacks.invert import SCENARIOS, audit, markdown

RESULTS = Path(__file__).parent / "results" / "inversion.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    results = audit(args.run_dir, list(SCENARIOS))
    keep = ("images", "psnr", "ssim", "mse", "baseline_psnr", "baseline_ssim", "best_other_psnr", "psnr_gain",
            "ssim_gain", "reidentification", "feature_reidentification", "chance", "gallery", "feature_cosine",
            "label_accuracy", "iterations", "seconds", "outsiders", "null", "gallery_reidentification",
            "gallery_chance", "gallery_size", "ranked_reidentification", "null_update", "gallery_draws",
            "noise_multiplier", "without_dp")
    table = {name: {k: r[k] for k in keep if k in r} for name, r in results["scenarios"].items()}
    report = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
              "run_dir": str(args.run_dir), "wall_s": time.perf_counter() - start, "verdict": results["verdict"],
              "scenarios": table}
    print(markdown(results))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
