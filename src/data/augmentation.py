"""Augmentation of a whole batch, on the device that trains on it.

Small geometric jitter (rotation ±10°, scale ±10% per axis, shear ±0.05), as
positioning differs between patients and sites, on 80% of the images; never a
left-right flip: the heart's side is anatomy, not noise. The same distribution as
MONAI's `RandAffined(prob=0.8, rotate_range=10°, scale_range=0.1, shear_range=0.05)`
per image, but drawn for the whole batch at once and resampled by MONAI's batched
`AffineTransform` (one `grid_sample`): per image, in the loader, MONAI's transform costs
a millisecond of Python, so a GPU that trains a ResNet-18 on thousands of images a
second would wait for it. The loader serves the cached, un-augmented images.

Each image is transformed on its own (its parameters are drawn for it). The draws go by
position in the batch, so under DP they are secret (`BatchAugmentation(None)`): with a seed
the server knows, one record's presence would shift the jitter of the records after it.
"""

from __future__ import annotations

import math
import os

import torch

PROBABILITY = 0.8
ROTATE = math.radians(10)
SCALE = 0.1
SHEAR = 0.05


def compose(angle: torch.Tensor, shear: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """3×3 pull matrices (output pixel → input pixel, centred coordinates) for N angles, N×2 shears
    and N×2 scales, composed as MONAI's `AffineGrid` composes them: rotate @ shear @ scale."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    s0, s1 = shear[:, 0], shear[:, 1]
    # MONAI's 2-D shear: the (0,1) shear by s0, then the (1,0) shear by s1 (determinant 1)
    shear_matrix = torch.stack([torch.stack([torch.ones_like(s0), s0], 1), torch.stack([s1, s0 * s1 + 1], 1)], 1)
    matrices = torch.eye(3, dtype=angle.dtype, device=angle.device).repeat(len(angle), 1, 1)
    matrices[:, :2, :2] = rotate @ shear_matrix @ torch.diag_embed(scale)
    return matrices


def random_matrices(count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` draws of the jitter, on the generator's device; the identity where an image is left as is."""
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=generator.device) * (high - low) + low

    matrices = compose(uniform(-ROTATE, ROTATE, count), uniform(-SHEAR, SHEAR, count, 2),
                       uniform(1 - SCALE, 1 + SCALE, count, 2))
    augmented = torch.rand(count, generator=generator, device=generator.device) < PROBABILITY
    return torch.where(augmented[:, None, None], matrices, torch.eye(3, device=generator.device))


class BatchAugmentation:
    """Callable on a batch of square images (N, C, H, W), on their device; draws from its own generator
    (seeded, on that device), so a hospital's augmentation is reproducible from its seed. `seed` None:
    a secret one (under DP: the draws go by position in the batch, so with a seed the server knows,
    one record's presence would shift the jitter of the records after it)."""

    def __init__(self, seed: int | None):
        from monai.networks.layers import AffineTransform

        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        self._generator: torch.Generator | None = None
        # pixel coordinates centred on the image, as MONAI's Affine and RandAffine resample a square image
        self.resample = AffineTransform(normalized=False, zero_centered=True, padding_mode="zeros",
                                        align_corners=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:  # Poisson sampling can draw an empty batch
            return images
        if self._generator is None or self._generator.device != images.device:
            self._generator = torch.Generator(device=images.device).manual_seed(self.seed)
        return self.resample(images, random_matrices(len(images), self._generator).to(images.dtype))
