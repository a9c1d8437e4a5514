"""Sharing out to hospitals and splitting: deterministic, stratified, skewed on request."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from src.data.layouts import Sample
from src.data.partition import assign_hospitals, split_hospital

HOSPITALS = ["h1", "h2", "h3", "h4"]


def dataset(n_per_class=(300, 200, 100), split=None):
    return [Sample(f"/x/{k}_{i}.png", k, None, split) for k, n in enumerate(n_per_class) for i in range(n)]


def class_mix(samples, hospital, num_classes=3):
    counts = Counter(s.label for s in samples if s.hospital == hospital)
    total = sum(counts.values())
    return np.array([counts[k] / total for k in range(num_classes)])


def skew(samples):
    """Mean total-variation distance between each hospital's class mix and the pooled one."""
    pooled = np.bincount([s.label for s in samples]) / len(samples)
    return np.mean([0.5 * np.abs(class_mix(samples, h) - pooled).sum() for h in HOSPITALS])


def test_same_seed_same_partition_other_seed_another():
    a = assign_hospitals(dataset(), HOSPITALS, "dirichlet", 0.5, seed=7)
    b = assign_hospitals(list(reversed(dataset())), HOSPITALS, "dirichlet", 0.5, seed=7)
    c = assign_hospitals(dataset(), HOSPITALS, "dirichlet", 0.5, seed=8)
    key = lambda samples: sorted((s.path, s.hospital) for s in samples)  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_iid_is_balanced_in_size_and_classes():
    samples = assign_hospitals(dataset(), HOSPITALS, "iid", 0.5, seed=0)
    assert len(samples) == 600
    sizes = Counter(s.hospital for s in samples)
    assert max(sizes.values()) - min(sizes.values()) <= 3
    assert skew(samples) < 0.02


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    skews = {alpha: np.mean([skew(assign_hospitals(dataset(), HOSPITALS, "dirichlet", alpha, seed))
                             for seed in range(5)]) for alpha in (0.1, 1.0, 100.0)}
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[0.1] > 0.3
    assert skews[100.0] < 0.08


def test_dirichlet_keeps_each_hospitals_mix_across_existing_splits():
    samples = dataset((400, 400, 400), "train") + [
        Sample(s.path.replace(".png", "_t.png"), s.label, None, "test") for s in dataset((200, 200, 200))]
    out = assign_hospitals(samples, HOSPITALS, "dirichlet", 0.3, seed=1)
    for h in HOSPITALS:
        train = class_mix([s for s in out if s.split == "train"], h)
        test = class_mix([s for s in out if s.split == "test"], h)
        assert np.abs(train - test).max() < 0.1


def test_more_hospitals_than_images_is_refused():
    with pytest.raises(ValueError, match="federation.num_hospitals"):
        assign_hospitals(dataset((2, 1, 1)), HOSPITALS, "iid", 0.5, seed=0)


def test_bad_partition_settings_are_refused():
    with pytest.raises(ValueError, match="data.partition"):
        assign_hospitals(dataset(), HOSPITALS, "powerlaw", 0.5, seed=0)
    with pytest.raises(ValueError, match="data.alpha"):
        assign_hospitals(dataset(), HOSPITALS, "dirichlet", 0.0, seed=0)
    with pytest.raises(ValueError, match="data.val_fraction"):
        split_hospital(dataset(), 0.6, 0.5, seed=0)


def test_stratified_split_puts_every_class_in_val_and_test():
    out = split_hospital(dataset((50, 30, 20)), 0.2, 0.2, seed=3)
    for split, fraction in {"train": 0.6, "val": 0.2, "test": 0.2}.items():
        per_class = Counter(s.label for s in out if s.split == split)
        for k, n in enumerate((50, 30, 20)):
            assert per_class[k] == pytest.approx(n * fraction, abs=1)
    assert split_hospital(dataset((50, 30, 20)), 0.2, 0.2, seed=3) == out


def test_existing_splits_are_kept_and_val_carved_from_train():
    samples = dataset((40, 40, 40), "train") + [
        Sample(s.path.replace(".png", "_t.png"), s.label, None, "test") for s in dataset((5, 5, 5))]
    out = split_hospital(samples, 0.25, 0.2, seed=0)
    assert Counter(s.split for s in out) == {"train": 90, "val": 30, "test": 15}
    assert {s.path for s in out if s.split == "test"} == {s.path for s in samples if s.split == "test"}
