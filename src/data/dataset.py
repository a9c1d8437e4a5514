"""MONAI datasets over a hospital's samples, backed by an on-disk decode cache.

A persistent (on-disk) cache rather than an in-memory one because a Flower
ClientApp may live in a fresh process every round: `PersistentDataset` lets round 2
read the decoded, resized images that round 1 wrote. `prepare` fills the cache up
front and is where undecodable files are found, skipped and counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hydra.utils import to_absolute_path
from monai.data import PersistentDataset

from src.data.layouts import Sample
from src.data.skips import SkipLog, UnusableImage
from src.data.transforms import eval_transforms, train_transforms


def cache_dir(data_cfg) -> Path:
    """One cache per image size: the cached images are already resized."""
    return Path(to_absolute_path(str(data_cfg.cache_dir))) / f"{int(data_cfg.image_size)}px"


def _file(sample: Sample) -> str:
    """The file on disk (a MedMNIST sample is `<file.npz>::<split>:<index>`)."""
    return sample.path.split("::")[0]


def _item(sample: Sample) -> dict:
    """The dict MONAI hashes for the cache key: a changed file gets a new entry."""
    stat = os.stat(_file(sample))
    return {"image": sample.path, "label": sample.label, "stamp": f"{stat.st_mtime_ns}-{stat.st_size}"}


def make_dataset(samples: list[Sample], data_cfg, train: bool) -> PersistentDataset:
    """Training (augmented) or evaluation dataset; both share the same cache entries."""
    size = int(data_cfg.image_size)
    return PersistentDataset(
        [_item(s) for s in samples],
        transform=train_transforms(size) if train else eval_transforms(size),
        cache_dir=cache_dir(data_cfg),
    )


def _unusable(error: BaseException) -> UnusableImage | None:
    """MONAI wraps a transform's exception; find ours in the chain."""
    while error is not None:
        if isinstance(error, UnusableImage):
            return error
        error = error.__cause__
    return None


def prepare(samples: list[Sample], data_cfg, skips: SkipLog, advance: Callable[[int], None] = lambda n: None
            ) -> list[Sample]:
    """Decode every sample into the cache once; return the ones that decoded (`advance` counts them).

    A file that fails is skipped with one warning and counted in `skips`; the rest
    of the hospital is unaffected.
    """
    present = []
    for sample in samples:
        if os.path.isfile(_file(sample)):
            present.append(sample)
        else:
            skips.skip(sample.path, "missing file", hospital=sample.hospital or "-")
    dataset = make_dataset(present, data_cfg, train=False)
    usable = []
    for i, sample in enumerate(present):
        try:
            dataset[i]
        except Exception as e:  # noqa: BLE001 - re-raised unless it is a bad file
            unusable = _unusable(e)
            if unusable is None:
                raise
            skips.skip_error(sample.path, unusable, sample.hospital or "-")
        else:
            usable.append(sample)
        advance(1)
    return usable
