"""`python -m src.predict <image|folder|csv>... --model <run dir>/model.pt`: class probabilities, in the clear.

The images go through the same decoding and evaluation transforms as in training;
an unreadable one is named on stderr and skipped. `--json` prints one object per image,
`{"image", "probabilities": {class: p}, "seconds"}`, the shape `src.inference.diagnose
--json` prints for the encrypted diagnosis of the same images; `--out FILE.csv` also
writes one row per image (path, a probability per class, the predicted class).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.data.inputs import image_paths
from src.data.skips import UnusableImage
from src.data.transforms import radiograph_transforms
from src.models.registry import build_model


def load_model(path) -> tuple[torch.nn.Module, list[str], int]:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(OmegaConf.create(saved["model"]), len(saved["classes"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved["classes"], int(saved["image_size"])


def decode(path: Path, image_size: int) -> torch.Tensor | None:
    """The model's input for one image; None (named on stderr) when it cannot be read."""
    try:
        return radiograph_transforms(image_size)({"image": str(path)})["image"]
    except RuntimeError as e:  # MONAI wraps the decoder's UnusableImage
        if not isinstance(e.__cause__, UnusableImage):
            raise
        print(f"skipped {path}: {e.__cause__}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"skipped {path}: {e}", file=sys.stderr)
    return None


@torch.no_grad()
def probabilities(model, image: torch.Tensor) -> list[float]:
    return torch.softmax(model(image.unsqueeze(0)), dim=1)[0].tolist()


def predict_image(model, image_size: int, path: str) -> list[float]:
    return probabilities(model, radiograph_transforms(image_size)({"image": path})["image"])


def show(path: Path, classes: list[str], probabilities: list[float], seconds: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image": str(path), "probabilities": dict(zip(classes, probabilities)),
                          "seconds": seconds}), flush=True)
        return
    print(f"{path}  ({seconds:.3f} s)")
    for name, p in sorted(zip(classes, probabilities), key=lambda x: -x[1]):
        print(f"  {name:12s} {p:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Class probabilities from a run's model, "
                                     "in the clear. Reads images (DICOM, PNG, JPEG), folders of them or a CSV "
                                     "naming them; writes to stdout, and to a CSV with --out. Unreadable images "
                                     "are named on stderr and skipped.")
    parser.add_argument("images", nargs="+", help="image files, folders (recursive) or a CSV (column `image`)")
    parser.add_argument("--model", required=True, help="model.pt of a run")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--out", type=Path, metavar="CSV", help="also write path, probabilities, predicted class")
    args = parser.parse_args(argv)
    model, classes, size = load_model(args.model)
    paths, done = image_paths(args.images), 0
    with open(args.out or os.devnull, "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["path", *(f"p_{c}" for c in classes), "predicted"])
        for path in paths:
            start = time.perf_counter()
            image = decode(path, size)
            if image is None:
                continue
            p = probabilities(model, image)
            show(path, classes, p, time.perf_counter() - start, args.json)
            rows.writerow([str(path), *(f"{x:.6f}" for x in p), classes[p.index(max(p))]])
            done += 1
    if done < len(paths):
        print(f"{len(paths) - done} of {len(paths)} image(s) skipped", file=sys.stderr)
    return 0 if done else 2


if __name__ == "__main__":
    sys.exit(main())
