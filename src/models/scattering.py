"""`model=scatter_linear`: a fixed wavelet-scattering front end and a trained linear head.

Why: under DP-SGD the noise grows with the number of trained parameters while the
signal grows with the batch, and a hospital has a few hundred radiographs. Tramèr &
Boneh (ICLR 2021) showed that a fixed ScatterNet with a linear head beats end-to-end
CNNs under DP on small data: the head has ~10⁴ parameters and trains at full batch.
The front end is public, fixed computation (no weights learnt from anyone's data), so
encrypted diagnosis can run it at the hospital in the clear and only the head under
encryption.

    front end: log(|Scattering2D(J, L)| + eps), average-pooled to pool × pool per channel,
               standardised per feature with statistics of a public reference set
    head:      nn.Linear(features, classes)

The standardisation statistics are buffers of the model: the initial global model
carries them (src/models/initial.py computes them on the public reference set), so
every hospital and the encrypted-diagnosis service use the same.
"""

from __future__ import annotations

import torch
from torch import nn


def _scattering2d():
    """kymatio's Scattering2D (kymatio 0.3.0 is the maintained wavelet-scattering library; MONAI has none).

    kymatio's package import also imports its 3-D transform, which imports
    `scipy.special.sph_harm`, removed in SciPy 1.15 (kymatio issue #1068, fixes
    unmerged). The 2-D transform never calls it: a placeholder that raises if anything
    ever does keeps the import working with current SciPy.
    """
    import scipy.special

    if not hasattr(scipy.special, "sph_harm"):
        def sph_harm(*args, **kwargs):
            raise NotImplementedError("scipy.special.sph_harm was removed in SciPy 1.15 (kymatio's 3-D transform)")

        scipy.special.sph_harm = sph_harm
    from kymatio.torch import Scattering2D

    return Scattering2D


class ScatterFrontEnd(nn.Module):
    """Fixed features of a (B, 1, S, S) image batch: (B, channels × pool²). No trainable parameters."""

    def __init__(self, image_size: int, J: int = 3, L: int = 8, pool: int = 4, eps: float = 1e-3):
        super().__init__()
        if image_size % (2**J) or image_size // 2**J < pool or (image_size // 2**J) % pool:
            raise ValueError(f"model.pool: {pool} must divide image_size / 2^J = {image_size / 2**J:g} "
                             f"(data.image_size={image_size}, model.J={J})")
        self.scattering = _scattering2d()(J=J, shape=(image_size, image_size), L=L)
        self.channels = 1 + J * L + L * L * J * (J - 1) // 2
        self.pool, self.eps = pool, eps
        self.features = self.channels * pool * pool
        self.register_buffer("mean", torch.zeros(self.features))
        self.register_buffer("std", torch.ones(self.features))

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """Log-scattering features before standardisation (what the reference statistics are taken of)."""
        s = self.scattering(images.float().contiguous())  # (B, 1, channels, S/2^J, S/2^J)
        s = torch.log(s.abs().flatten(1, 2) + self.eps)
        return nn.functional.adaptive_avg_pool2d(s, self.pool).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.raw(images) - self.mean) / self.std


class ScatterLinear(nn.Module):
    """The fixed front end followed by the only trained layer, `head`."""

    def __init__(self, num_classes: int, image_size: int, J: int = 3, L: int = 8, pool: int = 4):
        super().__init__()
        self.front_end = ScatterFrontEnd(image_size, J=J, L=L, pool=pool)
        self.front_end.requires_grad_(False)
        self.head = nn.Linear(self.front_end.features, num_classes)
        nn.init.zeros_(self.head.weight)  # a linear model on standardised features: start from no opinion
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.front_end(images))
