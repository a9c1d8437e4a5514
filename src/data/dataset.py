"""MONAI datasets over a hospital's samples, backed by an on-disk decode cache.

A persistent (on-disk) cache rather than an in-memory one because a Flower
ClientApp may live in a fresh process every round: `PersistentDataset` lets round 2
read the decoded, resized images that round 1 wrote. `prepare` fills the cache up
front and is where undecodable files are found, skipped and counted; what it found
is recorded beside the cache (`decoded.json`, per file and modification stamp), so the
next run's `prepare` decodes only new or changed files, and without any, never imports
MONAI (~4 s of CPU in every launch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import to_absolute_path

from src.data.layouts import Sample
from src.data.skips import SkipLog, UnusableImage

if TYPE_CHECKING:
    from monai.data import PersistentDataset

IMAGES = "images"  # the PersistentDataset's entries (beside them: decoded.json, features)
DECODED = "decoded.json"  # {"<file>|<stamp>": null (usable) or [reason, detail]}, beside the cache entries


def cache_dir(data_cfg) -> Path:
    """One cache per image size: the cached images are already resized."""
    return Path(to_absolute_path(str(data_cfg.cache_dir))) / f"{int(data_cfg.image_size)}px"


def _file(sample: Sample) -> str:
    """The file on disk (a MedMNIST sample is `<file.npz>::<split>:<index>`)."""
    return sample.path.split("::")[0]


def _stamp(sample: Sample) -> str:
    stat = os.stat(_file(sample))
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def _item(sample: Sample) -> dict:
    """The dict MONAI hashes for the cache key: a changed file gets a new entry."""
    return {"image": sample.path, "label": sample.label, "stamp": _stamp(sample)}


def make_dataset(samples: list[Sample], data_cfg) -> PersistentDataset:
    """Decoded, resized images (training and evaluation alike: augmentation runs on the training device)."""
    from monai.data import PersistentDataset

    from src.data.transforms import radiograph_transforms

    return PersistentDataset(
        [_item(s) for s in samples],
        transform=radiograph_transforms(int(data_cfg.image_size)),
        cache_dir=cache_dir(data_cfg) / IMAGES,
    )


def in_memory(dataset: PersistentDataset, data_cfg):
    """`dataset` with as many of its images as fit in `data.memory_cache_mb` held in memory (MONAI's
    `CacheDataset` over the disk cache; the rest still read from disk).

    Training reads every image once per epoch, several epochs a round. From the disk cache that
    is ~0.7 ms an image (MONAI hashes the item and `torch.load`s its file): a loader of ~1,500
    images/s at 224 px on 2 CPU cores, and an H200 training ResNet-18 from it reached 0.31× of
    the 3,400 images/s it trains at from memory (bench/loader_throughput.py). From memory a
    batch is one `torch.stack`.
    """
    from monai.data import CacheDataset

    image_bytes = 4 * int(data_cfg.image_size) ** 2  # one float32 channel
    count = min(len(dataset), int(float(data_cfg.memory_cache_mb) * 2**20) // image_bytes)
    # copy_cache=False: nothing random transforms a cached item in place (augmentation runs on batches)
    return CacheDataset(dataset, transform=None, cache_num=count, copy_cache=False, progress=False)


def _unusable(error: BaseException) -> UnusableImage | None:
    """MONAI wraps a transform's exception; find ours in the chain."""
    while error is not None:
        if isinstance(error, UnusableImage):
            return error
        error = error.__cause__
    return None


def _read_decoded(path: Path) -> dict:
    try:
        decoded = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: decode again
        return {}
    return decoded if isinstance(decoded, dict) else {}


def prepare(samples: list[Sample], data_cfg, skips: SkipLog, advance: Callable[[int], None] = lambda n: None
            ) -> list[Sample]:
    """Decode every sample into the cache once; return the ones that decoded (`advance` counts them).

    A file that fails is skipped with one warning and counted in `skips`; the rest
    of the hospital is unaffected. A file decoded (or refused) by an earlier call, and
    not modified since, is not decoded again: its outcome comes from `decoded.json`.
    """
    record = cache_dir(data_cfg) / DECODED
    decoded = _read_decoded(record)
    present, keys = [], {}
    for sample in samples:
        if os.path.isfile(_file(sample)):
            present.append(sample)
            keys[sample.path] = f"{sample.path}|{_stamp(sample)}"
        else:
            skips.skip(sample.path, "missing file", hospital=sample.hospital or "-")
    new = [s for s in present if keys[s.path] not in decoded]
    advance(len(present) - len(new))
    if new:
        dataset = make_dataset(new, data_cfg)
        for i, sample in enumerate(new):
            try:
                dataset[i]
            except Exception as e:  # noqa: BLE001 - re-raised unless it is a bad file
                unusable = _unusable(e)
                if unusable is None:
                    raise
                decoded[keys[sample.path]] = [unusable.reason, unusable.detail]
            else:
                decoded[keys[sample.path]] = None
            advance(1)
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(f".{os.getpid()}.tmp")  # whole or not at all, whoever writes last
        partial.write_text(json.dumps(decoded))
        os.replace(partial, record)
    usable = []
    for sample in present:
        outcome = decoded[keys[sample.path]]
        if outcome is None:
            usable.append(sample)
        else:
            skips.skip_error(sample.path, UnusableImage(*outcome), sample.hospital or "-")
    return usable
