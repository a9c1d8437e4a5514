"""A fixed front end's features of a set of images, computed once and cached where they are used.

A model with a fixed front end (`scatter_linear`) trains and evaluates only its head,
and the front end's output for an image never changes. A ClientApp may run in a new
process at any message (Flower's per-message processes, a restarted worker, Ray), so
without an on-disk cache every round could decode the images again (importing MONAI
alone costs ~6 s of CPU) and run the scattering transform again (~30 ms per 64 px
image). The cache holds the raw features (before the reference standardisation, which
the run's initial model carries) in one file per image set,
named by a hash of the front end's settings and of every image's path, size and
modification time: a changed image or setting makes a new file. A hospital's cache
lies beside its manifest (its own disk); the server's, for the pooled test set, in the
run directory; the public reference set's, in the data cache. The launcher, which decodes
every hospital's images on one machine, keeps its copies in the data cache too, so a
later run over the same images computes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from src.data.layouts import Sample


def _key(front_end, samples: list[Sample], image_size: int) -> str:
    settings = {"front_end": type(front_end).__name__, "settings": front_end.settings(), "image_size": image_size}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for s in samples:
        stat = os.stat(s.path.split("::")[0])
        digest.update(f"{s.path}\0{s.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def features_file(front_end, samples: list[Sample], data_cfg, cache_dir: Path) -> Path:
    """Where `raw_features` keeps these features in `cache_dir`."""
    return Path(cache_dir) / f"features-{_key(front_end, samples, int(data_cfg.image_size))}.pt"


@torch.no_grad()
def raw_features(front_end, samples: list[Sample], data_cfg, cache_dir: Path | None, device="cpu"):
    """(raw features (n, d), labels (n,)) of `samples`, decoded as for evaluation (no augmentation)."""
    path = None
    if cache_dir is not None:
        path = features_file(front_end, samples, data_cfg, cache_dir)
        if path.exists():
            saved = torch.load(path, weights_only=True)
            return saved["features"], saved["labels"]
    from monai.data import DataLoader  # MONAI: only when images must be read

    from src.data.dataset import make_dataset

    features, labels = [], []
    front_end.to(device).eval()
    for batch in DataLoader(make_dataset(samples, data_cfg), batch_size=64, num_workers=0):
        features.append(front_end.raw(batch["image"].to(device)).cpu())
        labels.append(torch.as_tensor(batch["label"]))
    features = torch.cat(features) if features else torch.zeros(0, front_end.raw_features)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if path is not None:
        save_features(path, features, labels)
    return features, labels


def save_features(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Write a set's raw features where `features_file` names them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two launches sharing a data cache may both write
    torch.save({"features": features, "labels": labels}, tmp)
    tmp.replace(path)
