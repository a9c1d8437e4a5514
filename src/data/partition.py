"""Sharing a dataset out to hospitals, and train/val/test splits within each.

Public datasets have no hospitals: `assign_hospitals` deals them out, IID or with
Dirichlet label skew (Hsu et al. 2019), the usual way to mimic sites whose case mix
differs. Splits are stratified per hospital so every class reaches val and test.
Both are pure functions of (samples, seed): the same seed gives the same split.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np

from src.data.layouts import Sample

MIN_PER_HOSPITAL = 2


def _by_class(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.path):
        groups[s.label].append(s)
    return dict(sorted(groups.items()))


def _cut(items: list, shares: np.ndarray, rng: np.random.Generator) -> list[list]:
    """Shuffle `items` and cut them into consecutive pieces of the given shares."""
    order = rng.permutation(len(items))
    bounds = np.round(np.cumsum(shares) / shares.sum() * len(items)).astype(int)
    pieces, start = [], 0
    for end in bounds:
        pieces.append([items[i] for i in order[start:end]])
        start = end
    return pieces


def assign_hospitals(
    samples: list[Sample], hospitals: list[str], how: str, alpha: float, seed: int
) -> list[Sample]:
    """Give every sample a hospital: `iid` (stratified, equal shares) or `dirichlet` (label skew).

    With `dirichlet`, each class is shared out by proportions drawn from Dir(alpha);
    the same proportions apply to every split the layout already has, so a hospital's
    test set has its own case mix. Draws are repeated until every hospital has at least
    a couple of images.
    """
    if how not in ("iid", "dirichlet"):
        raise ValueError(f"data.partition: expected 'iid' or 'dirichlet', got {how!r}")
    if how == "dirichlet" and not alpha > 0:
        raise ValueError(f"data.alpha: must be > 0 for a Dirichlet partition, got {alpha}")
    if len(samples) < MIN_PER_HOSPITAL * len(hospitals):
        raise ValueError(
            f"federation.num_hospitals: {len(hospitals)} hospitals need at least "
            f"{MIN_PER_HOSPITAL * len(hospitals)} images, the dataset has {len(samples)}"
        )
    rng = np.random.default_rng(seed)
    by_split: dict[str | None, list[Sample]] = defaultdict(list)
    for s in samples:
        by_split[s.split].append(s)
    classes = sorted({s.label for s in samples})
    for _ in range(1000):
        if how == "iid":
            shares = {k: np.ones(len(hospitals)) for k in classes}
        else:
            shares = {k: rng.dirichlet(np.full(len(hospitals), alpha)) for k in classes}
        assigned = []
        for split in sorted(by_split, key=str):
            for label, group in _by_class(by_split[split]).items():
                for hospital, piece in zip(hospitals, _cut(group, shares[label], rng)):
                    assigned += [replace(s, hospital=hospital) for s in piece]
        sizes = np.array([sum(s.hospital == h for s in assigned) for h in hospitals])
        if sizes.min() >= MIN_PER_HOSPITAL:
            return assigned
    raise ValueError(
        f"data.alpha: {alpha} leaves some of {len(hospitals)} hospitals without images; raise data.alpha"
    )


def split_hospital(samples: list[Sample], val_fraction: float, test_fraction: float, seed: int) -> list[Sample]:
    """Stratified train/val/test for one hospital, keeping splits the layout already gave.

    Samples without a split are divided train/val/test; a hospital that then has no
    val images gets `val_fraction` of its train images as val.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"data.val_fraction/test_fraction: need fractions in [0, 1) summing below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    kept = [s for s in samples if s.split is not None]
    fresh = [s for s in samples if s.split is None]
    shares = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    for group in _by_class(fresh).values():
        for split, piece in zip(("train", "val", "test"), _cut(group, shares, rng)):
            kept += [replace(s, split=split) for s in piece]
    if val_fraction > 0 and not any(s.split == "val" for s in kept):
        train = [s for s in kept if s.split == "train"]
        kept = [s for s in kept if s.split != "train"]
        for group in _by_class(train).values():
            rest, val = _cut(group, np.array([1 - val_fraction, val_fraction]), rng)
            kept += rest + [replace(s, split="val") for s in val]
    return sorted(kept, key=lambda s: s.path)
