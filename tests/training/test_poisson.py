"""Poisson sampling for DP-SGD: an empty first draw is a batch of no images, and the expected batch is rounded."""

from __future__ import annotations

import math

import pytest
import torch

from src.training.loops import train_epochs
from src.training.poisson import expected_batch, poisson_loader
from src.training.privacy import Plan


class Images(torch.utils.data.Dataset):
    """Dict samples, as a hospital's datasets give them."""

    def __init__(self, n: int, shape: tuple = (8,)):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": int(self.y[i])}


def first_draw_empty_seed(n: int, q: float) -> int:
    """A seed whose generator makes the sampler's first draw empty (Opacus' sampler: rand(n) < q)."""
    return next(s for s in range(10_000) if not (torch.rand(n, generator=torch.Generator().manual_seed(s)) < q).any())


def test_an_empty_first_draw_is_a_batch_of_no_images():
    data = Images(49)
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    seed = first_draw_empty_seed(49, 1 / 49)
    batches = list(poisson_loader(loader, torch.Generator().manual_seed(seed)))
    assert len(batches) == 49
    first = batches[0]
    assert first["image"].shape == (0, 8) and first["label"].shape == (0,) and first["label"].dtype == torch.long
    assert batches[0] is not poisson_loader(loader, torch.Generator().manual_seed(seed)).collate_fn([])  # fresh
    assert sum(len(b["label"]) for b in batches) > 0  # later draws are not all empty


@pytest.mark.parametrize("n, batch_size, expected", [(49, 1, 1), (195, 16, 15), (195, 1024, 195), (98, 1, 1)])
def test_the_expected_batch_is_rounded(n, batch_size, expected):
    loader = torch.utils.data.DataLoader(Images(n), batch_size=batch_size)
    assert expected_batch(poisson_loader(loader, torch.Generator())) == expected


@pytest.mark.parametrize("mode", ["hooks", "functorch", "linear"])
def test_batches_of_one_train_a_finite_model(mode):
    """49 images in batches of 1: Opacus' own expected batch, int(49 × (1/49)) = int(0.999…) = 0, divided every
    step by zero and made every weight infinite; an empty first draw failed in its loader, an empty draw in
    functorch's convolution, and an empty draw's loss (NaN) became the epoch's."""
    dp = Plan(noise_multiplier=1.0, sample_rate=1 / 49, steps_per_round=49, planned_steps=49, delta=1e-5,
              max_grad_norm=1.0, target_epsilon=None)
    if mode == "linear":
        model, data = torch.nn.Linear(8, 3), Images(49)
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 2 * 2, 3))
        data = Images(49, shape=(1, 4, 4))
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=True)
    for _ in range(3):  # an empty first draw is one call in three
        loss, steps = train_epochs(model, loader, 1, 0.01, "cpu", dp=dp, grad_sample_mode=mode, optimizer="sgd")
        assert steps == 49 and math.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_epoch_takes_every_batch_of_the_loader():
    """Opacus' sampler takes int(1/q) draws: 92 for 93 batches."""
    loader = torch.utils.data.DataLoader(Images(93), batch_size=1)
    assert len(list(poisson_loader(loader, torch.Generator()))) == 93


def test_an_empty_draw_holds_nothing_of_any_sample():
    class Named(Images):
        def __getitem__(self, i: int) -> dict:
            return super().__getitem__(i) | {"path": f"/archive/patient{i}.dcm"}

    loader = torch.utils.data.DataLoader(Named(49), batch_size=1)
    empty = poisson_loader(loader, torch.Generator()).collate_fn([])
    assert empty["path"] == [] and empty["image"].shape == (0, 8)
