"""MONAI transforms for chest radiographs: decode, fit into a square, rescale intensities.

Deterministic, so `PersistentDataset` caches their whole output: a DICOM is decoded,
scaled and resized once, not every epoch or round. Training's augmentation is not here:
it runs on whole batches on the training device (src/data/augmentation.py).
"""

from __future__ import annotations

import torch
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Resized,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)

from src.data.images import load_image


class LoadRadiographd(MapTransform):
    """Decode with `src.data.images.load_image`.

    MONAI's own readers apply the modality rescale but neither the VOI LUT nor the
    MONOCHROME1 inversion, so a radiograph would come out with bone dark.
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_image(d[key])
        return d


def preprocessing(image_size: int) -> list:
    """Decode, fit into a square keeping the aspect ratio, rescale intensities robustly."""
    return [
        LoadRadiographd(keys="image"),
        EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
        Resized(keys="image", spatial_size=image_size, size_mode="longest", mode="area"),
        # After the resize: percentiles of the small image cost a tenth, and the
        # padding added next must not count as image.
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        SpatialPadd(keys="image", spatial_size=(image_size, image_size)),
    ]


def radiograph_transforms(image_size: int) -> Compose:
    """The dataset's transforms, for training and evaluation alike."""
    # the cache key's file stamp (a str) goes: under DP, Opacus' Poisson sampling can draw an empty
    # batch, which it builds from each field's type and cannot build for a str
    return Compose(preprocessing(image_size) + [EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
                                                DeleteItemsd(keys="stamp")])
