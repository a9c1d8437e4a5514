"""Local training: FedProx's proximal step, with and without DP-SGD."""

from __future__ import annotations

import pytest
import torch

from src.config import compose_config
from src.data.dataset import make_dataset
from src.data.layouts import Sample
from src.data.synthetic import generate
from src.models.registry import build_model
from src.training.loops import make_loader, train_epochs
from src.training.privacy import plan


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    generate(root / "img", hospitals=1, images_per_hospital=12, seed=0)
    classes = ["normal", "bacterial", "viral"]
    return root, [Sample(str(f), classes.index(f.parent.name)) for f in sorted((root / "img").rglob("*.dcm"))]


def test_an_empty_poisson_batch_can_be_built_from_a_training_batch(samples):
    """Under DP, Opacus samples each image with probability q, so a batch can be empty. It builds
    that batch in the shape of the first one, which must therefore hold no str (such as the cache
    key's file stamp)."""
    from opacus.data_loader import CollateFnWithEmpty
    from torch.utils.data import default_collate

    root, items = samples
    cfg = compose_config([f"data.cache_dir={root / 'cache'}", "data.image_size=32"])
    dataset = make_dataset(items[:2], cfg.data)
    collate = CollateFnWithEmpty(default_collate)
    collate([dataset[0], dataset[1]])
    empty = collate([])
    assert set(empty) == {"image", "label"} and empty["image"].shape == (0, 1, 32, 32)


@pytest.mark.parametrize("private", [False, True])
def test_the_proximal_step_pulls_back_to_the_global_model(samples, private):
    """With lr·mu = 1 the decoupled step w -= lr·mu·(w - w_g) returns every weight to w_g after each
    optimizer step: FedProx at its strongest keeps the global model; mu = 0 moves away from it."""
    root, items = samples
    cfg = compose_config([f"data.cache_dir={root / 'cache'}", "data.image_size=32", "federation.batch_size=8",
                          "federation.rounds=1", "federation.local_epochs=1"])
    dp = plan(cfg.privacy, cfg.federation, len(items)) if private else None
    lr = 1e-3
    for mu, moves in ((0.0, True), (1 / lr, False)):
        torch.manual_seed(0)
        model = build_model(cfg.model, 3)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        train_epochs(model, make_loader(items, cfg.data, True, 8, 0), 1, lr, "cpu", proximal_mu=mu, dp=dp)
        moved = max((v - start[k]).abs().max().item() for k, v in model.state_dict().items())
        assert (moved > 1e-4) if moves else (moved < 1e-6), (mu, moved)


def test_dp_noise_and_sampling_are_secret_and_fresh_on_every_attempt(samples, monkeypatch):
    """The same hospital training the same round twice from the same seeds (a retried or resumed
    round), or two hospitals seeded alike, draw different noise: nothing in the run config, which
    the server knows, reproduces it."""
    import opacus.optimizers.optimizer as dp_optimizer

    root, items = samples
    cfg = compose_config([f"data.cache_dir={root / 'cache'}", "data.image_size=32", "federation.batch_size=4",
                          "federation.rounds=1", "federation.local_epochs=1"])
    dp = plan(cfg.privacy, cfg.federation, len(items))
    drawn: list[list[torch.Tensor]] = []
    original = dp_optimizer._generate_noise

    def capture(*args, **kwargs):
        noise = original(*args, **kwargs)
        drawn[-1].append(noise.detach().clone())
        return noise

    monkeypatch.setattr(dp_optimizer, "_generate_noise", capture)
    for hospital_items in (items, items, items[::-1]):
        drawn.append([])
        torch.manual_seed(0)
        train_epochs(build_model(cfg.model, 3), make_loader(hospital_items, cfg.data, True, 4, 0), 1, 1e-3, "cpu",
                     dp=dp)
    assert all(len(d) > 0 for d in drawn)
    first, retried, other = (d[0] for d in drawn)
    assert first.shape == retried.shape and not torch.equal(first, retried)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("budget_images", [12, 5])
def test_a_training_loader_holds_what_fits_its_memory_budget_and_serves_the_disk_cache_images(samples,
                                                                                             budget_images):
    """Training reads the hospital's images from memory (as many as `data.memory_cache_mb` holds; the rest
    from the disk cache), un-augmented: exactly the images evaluation reads."""
    root, items = samples
    megabytes = budget_images * 4 * 32 * 32 / 2**20
    cfg = compose_config([f"data.cache_dir={root / 'cache'}", "data.image_size=32",
                          f"data.memory_cache_mb={megabytes}"])
    training = make_loader(items, cfg.data, True, 4, 0).dataset
    assert training.cache_num == min(budget_images, len(items))
    on_disk = make_dataset(items, cfg.data)
    for i in range(len(items)):
        assert torch.equal(training[i]["image"], on_disk[i]["image"]) and training[i]["label"] == items[i].label
