"""`python -m src.predict <image.dcm|png> --model <run dir>/model.pt`: class probabilities for one image.

The image goes through the same decoding and evaluation transforms as in training.
"""

from __future__ import annotations

import argparse
import sys

import torch
from omegaconf import OmegaConf

from src.data.skips import UnusableImage
from src.data.transforms import eval_transforms
from src.models.registry import build_model


def load_model(path) -> tuple[torch.nn.Module, list[str], int]:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(OmegaConf.create(saved["model"]), len(saved["classes"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved["classes"], int(saved["image_size"])


@torch.no_grad()
def predict_image(model, image_size: int, path: str) -> list[float]:
    image = eval_transforms(image_size)({"image": path})["image"]
    return torch.softmax(model(image.unsqueeze(0)), dim=1)[0].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image")
    parser.add_argument("--model", required=True, help="model.pt of a run")
    args = parser.parse_args(argv)
    model, classes, size = load_model(args.model)
    try:
        probs = predict_image(model, size, args.image)
    except RuntimeError as e:  # MONAI wraps the decoder's UnusableImage
        cause = e.__cause__
        if not isinstance(cause, UnusableImage):
            raise
        print(f"error: {args.image}: {cause}", file=sys.stderr)
        return 2
    for name, p in sorted(zip(classes, probs), key=lambda x: -x[1]):
        print(f"{name:12s} {p:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
