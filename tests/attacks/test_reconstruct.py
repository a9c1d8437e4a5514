"""The update-inversion attack on a small linear head: exact for one image, replay faithful, DP defeats it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from omegaconf import OmegaConf

from src.attacks.measures import leakage
from src.attacks.reconstruct import (
    Decoder,
    LocalTraining,
    features_of_one,
    gallery_gradients,
    match_features,
    match_gallery,
    rank_gallery,
    recover_labels,
    replay,
)
from src.training.loops import _Features, train_epochs
from src.training.privacy import plan

TRAINING = LocalTraining(lr=1.0, momentum=0.9, steps=3)


def hospital_update(weight, bias, x, y, training: LocalTraining, dp=None):
    """The head's update made by the hospital's own training code (`train_epochs`, full batch)."""
    head = torch.nn.Linear(x.shape[1], weight.shape[0]).double()
    head.load_state_dict({"weight": weight.clone(), "bias": bias.clone()})
    loader = torch.utils.data.DataLoader(_Features(x, y), batch_size=len(y))
    train_epochs(head, loader, training.steps, training.lr, "cpu", dp=dp, optimizer="sgd", momentum=training.momentum)
    return (head.weight.detach() - weight).numpy(), (head.bias.detach() - bias).numpy()


def _setting(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn(3, 12, generator=g, dtype=torch.float64) * 0.1, torch.zeros(3, dtype=torch.float64)
    return weight, bias, torch.randn(n, 12, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _cosine(a, b) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_one_image_gives_its_features_and_label_exactly_whatever_the_local_work():
    weight, bias, x, y = _setting(1)
    for training in (LocalTraining(1.0, 0.0, 1), TRAINING):
        dw, db = hospital_update(weight, bias, x, y, training)
        assert recover_labels(db, 1, np.full(3, 1 / 3), training) == [int(y[0])]
        assert np.allclose(features_of_one(dw, db), x[0].numpy(), atol=1e-8)


def test_the_replay_is_the_hospitals_training():
    weight, bias, x, y = _setting(8)
    dw, db = hospital_update(weight, bias, x, y, TRAINING)
    rw, rb = replay(weight, bias, x, y, TRAINING)
    assert np.allclose(rw.numpy(), dw, atol=1e-10) and np.allclose(rb.numpy(), db, atol=1e-10)


def test_the_clipped_replay_is_opacus_without_its_noise():
    weight, bias, x, y = _setting(8)
    dp = plan(OmegaConf.create({"delta": 1e-5, "max_grad_norm": 0.5, "target_epsilon": None,
                                "noise_multiplier": 1e-9}),
              OmegaConf.create({"batch_size": 8, "local_epochs": 3, "rounds": 1}), 8)
    dw, db = hospital_update(weight, bias, x, y, TRAINING, dp)
    rw, rb = replay(weight, bias, x, y, replace(TRAINING, max_grad_norm=0.5))
    assert np.allclose(rw.numpy(), dw, atol=1e-6) and np.allclose(rb.numpy(), db, atol=1e-6)


def test_a_gallery_names_the_patients_of_a_small_update_and_dp_hides_them():
    """An attacker holding the gallery's records names the 4 patients of an undefended update, not the
    patients of a noise update of its scale, and not those of the update under DP at a small ε."""
    weight, bias, gallery, labels = _setting(40, seed=5)
    members = [3, 11, 25, 37]

    def named(delta, training) -> list[int]:
        gradients, target = gallery_gradients(*delta, weight.numpy(), bias.numpy(), gallery.numpy(), labels.numpy(),
                                              training)
        picks = (match_gallery(gradients, target, 4), rank_gallery(gradients, target, 4, training.lr))
        return [len(set(picked) & set(members)) for picked in picks]

    assert named(hospital_update(weight, bias, gallery[members], labels[members], TRAINING), TRAINING)[0] == 4
    dw, db = hospital_update(weight, bias, gallery[members], labels[members], replace(TRAINING, lr=0.01))
    assert named((dw, db), replace(TRAINING, lr=0.01))[0] == 4  # an update far smaller than 1: the swaps still run
    rng = np.random.default_rng(0)
    assert max(named((rng.normal(size=dw.shape) * dw.std(), rng.normal(size=db.shape) * db.std()), TRAINING)) <= 1
    dp = plan(OmegaConf.create({"delta": 1e-5, "max_grad_norm": 1.0, "target_epsilon": 1.0, "noise_multiplier": None}),
              OmegaConf.create({"batch_size": 4, "local_epochs": 3, "rounds": 5}), 4 * 10)
    clipped = replace(TRAINING, max_grad_norm=1.0)
    hits = [named(hospital_update(weight, bias, gallery[members], labels[members], clipped, dp), clipped)
            for _ in range(5)]
    assert sum(map(max, hits)) <= 6  # chance: 4 × 4/40 a draw, 2 in 5 draws


def test_matching_recovers_two_images_features_from_their_update():
    weight, bias, x, y = _setting(2, seed=3)
    dw, db = hospital_update(weight, bias, x, y, TRAINING)
    found, _ = match_features(dw, db, weight.numpy(), bias.numpy(), y.tolist(), TRAINING, iterations=1500)
    pairs = [max(_cosine(f, t) for f in found) for t in x.numpy()]
    assert min(pairs) > 0.9


def test_dp_at_a_small_epsilon_leaves_nothing_to_read_in_one_images_update():
    weight, bias, x, y = _setting(1, seed=5)
    dp = plan(OmegaConf.create({"delta": 1e-5, "max_grad_norm": 1.0, "target_epsilon": 1.0,
                                "noise_multiplier": None}),
              OmegaConf.create({"batch_size": 1, "local_epochs": 3, "rounds": 1}), 1)
    cosines = []
    for _ in range(5):
        dw, db = hospital_update(weight, bias, x, y, replace(TRAINING, max_grad_norm=1.0), dp)
        cosines.append(_cosine(features_of_one(dw, db), x[0].numpy()))
    assert np.mean(np.abs(cosines)) < 0.6


def test_one_images_update_gives_back_its_pixels_and_dp_at_a_small_epsilon_does_not():
    """A tiny front end (a public linear projection of aligned images onto 8 components): the update of one
    image gives its features, the public decoder its pixels — well above the mean image; under DP at ε = 1
    the same attack scores no better than the mean image."""
    g = torch.Generator().manual_seed(0)
    basis = torch.rand(8, 16 * 16, generator=g, dtype=torch.float64) - 0.5
    mean = torch.linspace(0.3, 0.7, 16 * 16, dtype=torch.float64)

    def images(n):
        codes = torch.randn(n, 8, generator=g, dtype=torch.float64)
        return codes, (mean + 0.1 * codes @ basis).clamp(0, 1).reshape(n, 1, 16, 16)

    public_codes, public = images(400)
    decoder = Decoder(public_codes, public.float())
    codes, truth = images(1)
    weight, bias = torch.randn(3, 8, generator=g, dtype=torch.float64) * 0.1, torch.zeros(3, dtype=torch.float64)
    y = torch.tensor([1])
    others = public[:50].float()
    clear = leakage(decoder(features_of_one(*hospital_update(weight, bias, codes, y, TRAINING))[None]),
                    truth.float(), truth.float(), [0], others)
    assert clear["psnr_gain"] > 10
    dp = plan(OmegaConf.create({"delta": 1e-5, "max_grad_norm": 1.0, "target_epsilon": 1.0, "noise_multiplier": None}),
              OmegaConf.create({"batch_size": 1, "local_epochs": 3, "rounds": 1}), 1)
    noisy = [leakage(decoder(features_of_one(*hospital_update(weight, bias, codes, y,
                                                                replace(TRAINING, max_grad_norm=1.0), dp))[None]),
                     truth.float(), truth.float(), [0], others)["psnr_gain"] for _ in range(5)]
    assert np.mean(noisy) < 3
