"""Poisson sampling for DP-SGD: Opacus' sampler over a hospital's loader, without Opacus' `DPDataLoader`.

The privacy accounting assumes each image joins each batch independently with probability q
(`UniformWithReplacementSampler`, Opacus' own). Its `DPDataLoader` around that sampler builds the
batch for an empty *first* draw from `dataset[0]`'s items; a hospital's samples are dicts, whose
items are their keys, so that batch failed (`torch.zeros(..., dtype=str)`, opacus 1.6), which at an
expected batch of 1 is one round in three. It also takes int(1/q) draws an epoch, for some numbers
of batches one fewer (int(1/(1/93)) = 92), and `make_private` divides each step's
noisy sum by the expected batch truncated, not rounded: for 49 images in batches of 1,
int(49 × (1/49)) = 0, and the model became infinite. Here an empty draw is the dataset's own
structure with no rows, an epoch is the loader's number of batches, and the expected batch is
rounded.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


class _EmptyOrCollate:
    """The loader's collate; an empty draw becomes the structure of its output with no rows: tensors of
    no rows, no per-sample values (a fresh batch each time, holding nothing of any sample)."""

    def __init__(self, collate, dataset) -> None:
        self.collate, self.dataset = collate, dataset

    def __call__(self, batch: list):
        if batch:
            return self.collate(batch)
        one = self.collate([self.dataset[0]])
        if isinstance(one, dict):
            return {key: _no_rows(value) for key, value in one.items()}
        if isinstance(one, (list, tuple)):
            return type(one)(map(_no_rows, one))
        return _no_rows(one)


def _no_rows(value):
    if isinstance(value, torch.Tensor):
        return torch.zeros((0, *value.shape[1:]), dtype=value.dtype)
    return []  # a per-sample list (names, metadata): none


def poisson_loader(loader: DataLoader, generator: torch.Generator) -> DataLoader:
    """`loader`'s dataset, collate and workers, each batch a Poisson draw at q = 1 / len(loader)
    (expected batch: `loader`'s batch size) from `generator`."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(num_samples=len(loader.dataset), sample_rate=1 / len(loader),
                                            generator=generator, steps=len(loader))
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=_EmptyOrCollate(loader.collate_fn,
                      loader.dataset), num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)


def expected_batch(poisson: DataLoader) -> int:
    """The expected batch a DP step's noisy sum is divided by: len(dataset) × q, rounded (at least 1)."""
    return max(1, round(len(poisson.dataset) * poisson.batch_sampler.sample_rate))
