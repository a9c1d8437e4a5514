"""MONAI transforms: shape, range, and augmentation that never mirrors the chest."""

from __future__ import annotations

import numpy as np
import torch

from src.data.transforms import eval_transforms, train_transforms
from tests.data.conftest import write_png


def test_eval_transform_fits_any_aspect_ratio_into_a_square(tmp_path):
    path = tmp_path / "wide.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((60, 90)) * 255).astype(np.uint8)).save(path)
    out = eval_transforms(32)({"image": str(path), "label": 1})
    assert out["image"].dtype == torch.float32
    assert tuple(out["image"].shape) == (1, 32, 32)
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0


def test_augmentation_never_flips_left_and_right(tmp_path):
    """A chest whose bright half is on the image's right must stay so under every draw."""
    from PIL import Image

    img = np.zeros((64, 64), np.uint8)
    img[:, 40:] = 220  # the heart's side
    img[:, :24] = 30
    path = tmp_path / "heart.png"
    Image.fromarray(img).save(path)
    transform = train_transforms(64)
    transform.set_random_state(seed=0)
    changed = 0
    for _ in range(40):
        out = transform({"image": str(path), "label": 0})["image"][0]
        assert out[:, 40:].mean() > out[:, :24].mean()
        changed += not torch.allclose(out, eval_transforms(64)({"image": str(path)})["image"][0])
    assert changed > 20  # augmentation does run


def test_percentile_scaling_harmonises_exposure(tmp_path):
    dark = write_png(tmp_path / "dark.png", seed=1)
    from PIL import Image

    bright = tmp_path / "bright.png"
    Image.fromarray(np.clip(np.asarray(Image.open(dark), float) * 0.5 + 100, 0, 255).astype(np.uint8)).save(bright)
    a, b = (eval_transforms(32)({"image": str(p)})["image"] for p in (dark, bright))
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.98
    assert abs(a.mean() - b.mean()) < 0.05
