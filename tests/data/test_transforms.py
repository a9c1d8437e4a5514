"""MONAI transforms and batch augmentation: shape, range, and jitter that never mirrors the chest."""

from __future__ import annotations

import numpy as np
import torch

from src.data.augmentation import BatchAugmentation, compose
from src.data.transforms import radiograph_transforms
from tests.data.conftest import write_png


def test_eval_transform_fits_any_aspect_ratio_into_a_square(tmp_path):
    path = tmp_path / "wide.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((60, 90)) * 255).astype(np.uint8)).save(path)
    out = radiograph_transforms(32)({"image": str(path), "label": 1})
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
    image = radiograph_transforms(64)({"image": str(path), "label": 0, "stamp": "1-2"})["image"]
    batch = BatchAugmentation(seed=0)(image.expand(40, 1, 64, 64))
    assert (batch[:, 0, :, 40:].mean((1, 2)) > batch[:, 0, :, :24].mean((1, 2))).all()
    changed = [not torch.allclose(out, image) for out in batch]
    assert 20 < sum(changed) < 40  # augmentation does run, on about 80% of the images


def test_batch_augmentation_resamples_as_monai_affine_does():
    """Each image of a batch is moved exactly as MONAI's own (per-image) `Affine` moves it with the same
    rotation, shear and scale: the batch path draws the distribution `RandAffined` drew."""
    from monai.transforms import Affine

    images = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    angle = torch.tensor([0.1, -0.17, 0.0])
    shear = torch.tensor([[0.03, -0.04], [0.0, 0.05], [-0.05, 0.0]])
    scale = torch.tensor([[1.05, 0.93], [0.9, 1.1], [1.0, 1.08]])
    moved = BatchAugmentation(seed=0).resample(images, compose(angle, shear, scale))
    for i in range(3):
        expected = Affine(rotate_params=float(angle[i]), shear_params=tuple(shear[i].tolist()),
                          scale_params=tuple(scale[i].tolist()), padding_mode="zeros", image_only=True)(images[i])
        assert torch.allclose(moved[i], expected, atol=1e-4)


def test_batch_augmentation_is_reproducible_from_its_seed_and_passes_an_empty_batch():
    images = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    first, second, other = (BatchAugmentation(seed)(images) for seed in (3, 3, 4))
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert BatchAugmentation(seed=0)(images[:0]).shape == (0, 1, 32, 32)


def test_percentile_scaling_harmonises_exposure(tmp_path):
    dark = write_png(tmp_path / "dark.png", seed=1)
    from PIL import Image

    bright = tmp_path / "bright.png"
    Image.fromarray(np.clip(np.asarray(Image.open(dark), float) * 0.5 + 100, 0, 255).astype(np.uint8)).save(bright)
    a, b = (radiograph_transforms(32)({"image": str(p)})["image"] for p in (dark, bright))
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.98
    assert abs(a.mean() - b.mean()) < 0.05
