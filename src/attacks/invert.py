"""`python -m src.attacks.invert <run dir> [--scenario ...]`: what the server could reconstruct from updates.

Runs against the run's final global model and one hospital's real training images; the
attacker's view is simulated at the hospital, which has the ground truth to score it.
The hospital's update is made by its own training code (`train_epochs`: the run's
optimiser, learning rate, momentum, steps, batch, DP-SGD with a secret generator).

Scenarios (`src/attacks/reconstruct.py` for the attack, `measures.py` for the scores):

- `gradient-1`   one image, one gradient, no defence: the sanity gate; the attack must work here;
- `update`       the hospital's round update as `strategy=fedavg` shows it, no DP; and a
                 leakage curve over images per update (1, 4, 16, 64) and local work (1 step);
- `update-dp`    the same under DP-SGD at the run's σ, and at ε = 1 and 8 where that is another σ; and the
                 leakage curve's updates of 1, 4, 16, 64 images at the run's σ (64 also at ε = 1);
- `secure-aggregate`  what the server sees under the default: the sum over the round's hospitals, under DP.

Every update is also attacked by an attacker holding a gallery of the site's records
(`match_gallery`, `rank_gallery`: membership), on repeated draws where one draw varies,
and every attack is run again on noise of the update's scale (the null update): a row
that does no better than its null updates shows nothing. Only full-batch SGD
runs (the default model's training) are audited: the replay would attack another update.

Writes `attack.json`, one montage per scenario (`attack_<name>.png`: true | reconstruction |
most similar other patient) and an "Inversion audit" section in `report.md`. The attacks
that craft the global model (a malicious server: "Robbing the Fed", MedLeak) are out of scope.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.optimize import linear_sum_assignment

from src.attacks.measures import label_accuracy, leakage, reidentify, ssim_matrix
from src.attacks.reconstruct import (
    Decoder,
    LocalTraining,
    features_of_one,
    invert_front_end,
    gallery_gradients,
    match_features,
    match_gallery,
    rank_gallery,
    recover_labels,
)
from src.config import compose_config
from src.data.dataset import cache_dir, make_dataset, prepare
from src.data.federation import Federation
from src.data.reference import reference_samples
from src.data.skips import SkipLog
from src.models.features import raw_features
from src.predict import load_model
from src.training.loops import _Features, resolve_device, train_epochs
from src.training.privacy import plan

SCENARIOS = ("gradient-1", "update", "update-dp", "secure-aggregate")
CURVE_IMAGES = (1, 4, 16, 64)
# the gallery attacks again on other images and fresh DP noise (and, always, fresh noise updates): one draw varies
DRAWS, FULL_DRAWS, AGGREGATE_DRAWS = 30, 10, 5  # the small updates, a hospital's whole update, the aggregate
# what each control's row reports: the outsiders only the pairing's gains, the null also re-identification
CONTROLS = {"outsiders": ("psnr_gain", "ssim_gain"),
            "null": ("psnr_gain", "ssim_gain", "reidentification", "feature_reidentification", "feature_cosine")}


class Target:
    """The run's global model, a hospital's training images and features, other patients' images."""

    def __init__(self, run_dir: Path, hospital: str | None, device: str, prior_images: int = 3000):
        self.run_dir, self.cfg = run_dir, OmegaConf.load(run_dir / "config.yaml")
        self.model, self.classes, size = load_model(run_dir / "model.pt")
        if getattr(self.model, "front_end", None) is None:
            raise ValueError(f"model {self.cfg.model.name}: the audit inverts a linear head on a fixed front end "
                             "(scatter_linear); other models are not supported yet")
        self.device = resolve_device(device)
        split = Federation.load(run_dir / "split.json")
        self.hospitals = split.hospitals
        self.hospital = hospital or split.hospitals[0]
        # re-identification names patients of a gallery: every patient of the consortium, every split. The
        # server knows which hospital sent an update, so a hospital's update is scored among that hospital's
        # patients (`self.patients[h]`), the aggregate among everyone's; each hospital's training images
        # (what its updates are made of) are at `self.members[h]`, in training order
        readable, self.gallery, self.gallery_features = self._cached(split.samples, size, "front-end-features")
        self.patients = {h: [i for i, s in enumerate(readable) if s.hospital == h] for h in split.hospitals}
        self.members = {h: [i for i, s in enumerate(readable) if s.hospital == h and s.split == "train"]
                        for h in split.hospitals}
        self.labels = {h: torch.tensor([readable[i].label for i in idx]) for h, idx in self.members.items()}
        self.gallery_labels = np.array([s.label for s in readable])
        self.features = {h: self.gallery_features[idx] for h, idx in self.members.items()}
        # no hospital's patients: the public reference set
        _, self.others, reference = self._cached(reference_samples(self.cfg.reference), size, "reference-features")
        self.mean_prediction = torch.softmax(reference @ self.weight.T + self.bias, 1).mean(0).numpy()
        # the attacker's prior: public images only (the generator under a seed of its own, as an attacker
        # would gather an open chest X-ray set), a larger set than the reference statistics need
        public, prior, self.prior_features = self._cached(reference_samples(OmegaConf.create({
            "root": f"{self.cfg.reference.root}_attack_prior_{prior_images}", "images": prior_images,
            "seed": int(self.cfg.reference.seed) + 1})), size, "reference-features")
        self.decoder = Decoder(self.prior_features, prior)
        self.prior_labels = torch.tensor([sample.label for sample in public])
        fed = self.cfg.federation
        if (str(fed.optimizer) != "sgd" or self.cfg.strategy.name == "fedprox"
                or any(len(labels) > int(fed.batch_size) for labels in self.labels.values())):
            raise ValueError("the audit replays full-batch SGD (momentum allowed), as the default model trains; this "
                             f"run trains with {fed.optimizer}, batch {fed.batch_size}, strategy "
                             f"{self.cfg.strategy.name}: its updates would not be the ones attacked")
        self.training = LocalTraining(lr=float(fed.lr), momentum=float(fed.momentum),
                                      steps=int(fed.local_epochs) * max(1, -(-len(self.labels[self.hospital])
                                                                              // int(fed.batch_size))))

    def null_features(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n other patients' features (public images): reconstructions without information on anyone here."""
        pick = rng.choice(len(self.prior_features), n, replace=n > len(self.prior_features))
        return self.prior_features[pick].numpy()

    @torch.no_grad()
    def _cached(self, samples, size: int, features: str) -> tuple[list, torch.Tensor, torch.Tensor]:
        """The usable `samples`, their images and the model's features of them, through the data cache
        (the launcher decoded the hospitals' images and the reference set into it) and raw front-end
        features cached beside it, in `features`: decoded and computed once, not ~80 s of every audit.
        A file that cannot be decoded is skipped and named, as the launcher skips it."""
        data_cfg = OmegaConf.create({"image_size": size, "cache_dir": str(self.cfg.data.cache_dir)})
        usable = prepare(samples, data_cfg, SkipLog())
        dataset = make_dataset(usable, data_cfg)
        raw, _ = raw_features(self.model.front_end, usable, data_cfg, cache_dir(data_cfg) / features)
        return (usable, torch.stack([dataset[i]["image"] for i in range(len(usable))]),
                self.model.front_end.project(raw).double())

    @property
    def weight(self) -> torch.Tensor:
        return self.model.head.weight.detach().double()

    @property
    def bias(self) -> torch.Tensor:
        return self.model.head.bias.detach().double()

    def update(self, hospital: str, index: list[int], training: LocalTraining, dp=None) -> tuple[np.ndarray, np.ndarray]:
        """The hospital's head update on the images `index`, made by its own training code."""
        return self._trained(self.features[hospital][index], self.labels[hospital][index], training, dp)

    def public_update(self, n: int, training: LocalTraining, dp, rng: np.random.Generator):
        """An update made the same way from n public images (the attacker's prior): all the structure of a real
        update at this model, nothing about any gallery patient."""
        pick = torch.as_tensor(rng.choice(len(self.prior_features), n, replace=False))
        return self._trained(self.prior_features[pick], self.prior_labels[pick], training, dp)

    def _trained(self, features, labels, training: LocalTraining, dp) -> tuple[np.ndarray, np.ndarray]:
        head = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0]).double()
        head.load_state_dict({"weight": self.weight, "bias": self.bias})
        data = _Features(features, labels)
        loader = torch.utils.data.DataLoader(data, batch_size=len(labels))  # full batch, as the default trains
        train_epochs(head, loader, training.steps, training.lr, "cpu", dp=dp, optimizer="sgd",
                     momentum=training.momentum)
        return ((head.weight.detach() - self.weight).numpy(), (head.bias.detach() - self.bias).numpy())


def to_pixels(target: Target, features: np.ndarray, refine: int) -> torch.Tensor:
    images = target.decoder(features)
    if refine:
        images = invert_front_end(target.model.front_end, features, images, iterations=refine, device=target.device)
    return images


def attack(target: Target, delta: tuple[np.ndarray, np.ndarray], index: list[int], training: LocalTraining,
           hospital: str | None = None, pixels: int = 64, refine: int = 0) -> dict:
    """Labels, features, then pixels (for up to `pixels` of the images) from one observed update."""
    start = time.perf_counter()
    hospital = hospital or target.hospital
    n = len(index)
    labels, features, iterations = read(target, delta, n, training)
    members = [target.members[hospital][i] for i in index]
    site = target.patients[hospital]
    result = scored(target, features, members, site, members, pixels, refine)
    result.update({"label_accuracy": label_accuracy(labels, target.labels[hospital][index].tolist()),
                   "iterations": {"features": iterations, "pixels": refine}})
    result.update(by_gallery(target, delta, n, training, site, members))
    result["null_update"] = null_update(target, delta, n, training, members, site, members, pixels)
    result["seconds"] = time.perf_counter() - start
    return result


def read(target: Target, delta, n: int, training: LocalTraining) -> tuple[list[int], np.ndarray, int]:
    """Labels and features of the update's n images (and the matching's iterations)."""
    labels = recover_labels(delta[1], n, target.mean_prediction, training)
    if n == 1:
        return labels, features_of_one(*delta)[None], 0
    features, iterations = match_features(*delta, target.weight.numpy(), target.bias.numpy(), labels, training)
    return labels, features, iterations


GALLERY = ("gallery_reidentification", "ranked_reidentification")  # the two ways a gallery names members


def by_gallery(target: Target, delta, n: int, training: LocalTraining, site: list[int], members: list[int]) -> dict:
    """Members named by an attacker holding the `site`'s records (images and labels): the n whose gradients best
    add up to the update (`match_gallery`) and the n each likeliest in it (`rank_gallery`); the share of the n
    named who were in the update (`members`), and chance (n drawn without repeats)."""
    gradients, direction = gallery_gradients(*delta, target.weight.numpy(), target.bias.numpy(),
                                             target.gallery_features[site].numpy(), target.gallery_labels[site],
                                             training)
    inside = set(members)
    share = {key: len({site[i] for i in picked} & inside) / len(picked) for key, picked in zip(GALLERY, (
        match_gallery(gradients, direction, n), rank_gallery(gradients, direction, n, training.lr)))}
    return share | {"gallery_chance": len(inside) / len(site), "gallery_size": len(site)}


def gallery_draws(target: Target, draws: int, sample) -> dict:
    """The gallery attacks on `draws` updates from `sample(rng)` -> (update, public update, n, training, site,
    members), each paired with two that carry nothing about the site's patients: a noise update of its scale,
    and an update made the same way from public images (all the structure of a real update at this model: what
    the model's own fit to its training patients gives these attacks). Per attack: the mean share named, each
    null's mean, and the mean and spread of the per-draw difference from each."""
    rng = np.random.default_rng(draws)
    named = {key: {"real": [], "noise": [], "public": []} for key in GALLERY}
    for _ in range(draws):
        delta, public, n, training, site, members = sample(rng)
        blank = tuple(rng.normal(size=d.shape) * d.std() for d in delta)
        for kind, update in (("real", delta), ("noise", blank), ("public", public)):
            found = by_gallery(target, update, n, training, site, members)
            for key in GALLERY:
                named[key][kind].append(found[key])
    result = {"draws": draws, "chance": found["gallery_chance"]}
    for key, shares in named.items():
        result[key] = {"mean": float(np.mean(shares["real"]))}
        for null in ("noise", "public"):
            difference = np.subtract(shares["real"], shares[null])
            result[key] |= {f"{null}_mean": float(np.mean(shares[null])),
                            f"{null}_difference": float(difference.mean()),
                            f"{null}_difference_sd": float(difference.std(ddof=1))}
    return result


def subsets(target: Target, k: int, training: LocalTraining, dp=None):
    """Draws of updates of k of the audited hospital's training images, other images each draw."""
    h = target.hospital

    def sample(rng):
        index = sorted(rng.choice(len(target.members[h]), k, replace=False).tolist())
        return (target.update(h, index, training, dp), target.public_update(k, training, dp, rng), k, training,
                target.patients[h], [target.members[h][i] for i in index])
    return sample


def aggregates(target: Target, training: LocalTraining, dp=None):
    """Draws of the aggregate over every hospital (fresh DP noise each draw), named among everyone's patients; its
    public counterpart averages public updates of the hospitals' sizes."""
    everyone = [i for hospital in target.hospitals for i in target.members[hospital]]

    def sample(rng):
        sizes = [len(target.labels[h]) for h in target.hospitals]
        public = [target.public_update(n, training, dp, rng) for n in sizes]
        public = tuple(sum(n * u[i] for n, u in zip(sizes, public)) / sum(sizes) for i in range(2))
        return (aggregate(target, training, dp), public, len(everyone), training, list(range(len(target.gallery))),
                everyone)
    return sample


def null_update(target: Target, delta, n: int, training: LocalTraining, truth: list[int], site: list[int],
                members: list[int], pixels: int) -> dict:
    """The same attack on noise of the update's scale (no information about anyone), scored the same way:
    what the attack reads into no update at all. A row that does no better than its null update shows
    nothing, whatever its numbers against chance."""
    rng = np.random.default_rng([int(t) for t in truth] + [n])
    noise = tuple(rng.normal(size=d.shape) * d.std() for d in delta)
    _, features, _ = read(target, noise, n, training)
    chosen, _, cosine = paired(target, features, truth, pixels)
    position = {patient: i for i, patient in enumerate(site)}
    gallery = by_gallery(target, noise, n, training, site, members)
    return {"feature_reidentification": feature_reidentification(target, features[chosen], site,
                                                                 [position[m] for m in members]),
            "feature_cosine": cosine, **{key: gallery[key] for key in GALLERY}}


def scored(target: Target, features: np.ndarray, truth: list[int], site: list[int], members: list[int],
           pixels: int, refine: int, baseline: list[int] | None = None) -> dict:
    """The reconstructions `features` scored against the true images (gallery positions `truth`), among the
    `site`'s patients of whom `members` were in the update; beside two controls that share the pairing's
    look at the truth — the same reconstructions paired with as many `outsiders` (patients of the site who
    were not in the update: what the pairing alone gains with these reconstructions) and information-free
    reconstructions (other patients' features: the null, also for re-identification's base rate). A
    control measures only what its row reports (`CONTROLS`). `baseline`: the patients outsiders are drawn from
    and whose mean image the gains are over (default: the site's patients not in the update)."""
    baseline = sorted(set(site) - set(members)) if baseline is None else baseline
    result = score(target, features, truth, site, members, pixels, refine, baseline)
    # the controls' draws are seeded by the images scored: reproducible, and each of several one-image
    # attacks gets outsiders and null images of its own rather than the same ones every time
    rng = np.random.default_rng([int(t) for t in truth])
    if baseline:
        pick = rng.choice(len(baseline), min(len(truth), len(baseline)), replace=False)
        outsiders = score(target, features, [baseline[i] for i in sorted(pick)], site, members, pixels, refine,
                          baseline, control=True, reidentify=False)
        result["outsiders"] = {k: outsiders[k] for k in CONTROLS["outsiders"]}
    null = score(target, target.null_features(len(features), rng), truth, site, members, pixels, refine,
                 baseline, control=True)
    result["null"] = {k: null[k] for k in CONTROLS["null"]}
    return result


def score(target: Target, features: np.ndarray, truth: list[int], site: list[int], members: list[int],
          pixels: int, refine: int, baseline: list[int], control: bool = False, reidentify: bool = True) -> dict:
    """Pair reconstructions and true images one-to-one by their features (scoring only: it sees the truth),
    take the pairs of the first `pixels` true images to pixels, measure them; a `control` skips the
    true images' comparison with every other patient, and `reidentify=False` the naming of patients."""
    chosen, true, cosine = paired(target, features, truth, pixels)
    images = to_pixels(target, features[chosen], refine)
    position = {patient: i for i, patient in enumerate(site)}
    in_site = [position[m] for m in members]
    result = leakage(images, target.gallery[true], target.gallery[site] if reidentify else None, in_site,
                     target.others, best_other=not control, mean_of=target.gallery[baseline] if baseline else None)
    result.update({"images": len(truth), "measured_in_pixels": len(chosen), "feature_cosine": cosine})
    if reidentify:
        result["feature_reidentification"] = feature_reidentification(target, features[chosen], site, in_site)
    result["_montage"] = (target.gallery[true], images)
    return result


def paired(target: Target, features: np.ndarray, truth: list[int], pixels: int) -> tuple[np.ndarray, list[int], float]:
    """Reconstructions paired one-to-one with the true images (gallery positions `truth`) by their features
    (scoring only: it sees the truth): the reconstructions paired with the first `pixels` true images, those
    true images, and the mean feature cosine over every pair."""
    truth_features = target.gallery_features[truth].numpy()
    distance = ((features[:, None, :] - truth_features[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(distance)  # every true image paired when there are more reconstructions
    order = np.argsort(cols)[:pixels]
    cosine = (features[rows] * truth_features[cols]).sum(1) / (
        np.linalg.norm(features[rows], axis=1) * np.linalg.norm(truth_features[cols], axis=1) + 1e-12)
    return rows[order], [truth[c] for c in cols[order]], float(cosine.mean())


def feature_reidentification(target: Target, features: np.ndarray, patients: list[int], members: list[int]) -> float:
    """Re-identification by the recovered features among the gallery's `patients` (the update's at positions
    `members` of them): the front end is public, so an attacker holding a gallery's images names the patient
    whose features are nearest (the decoder loses information)."""
    gallery = target.gallery_features[patients].numpy()
    distance = (features ** 2).sum(1)[:, None] - 2 * features @ gallery.T + (gallery ** 2).sum(1)[None]
    return reidentify(-distance, members)[0]


def _dp(target: Target, epsilon: float | None):
    """The run's DP-SGD plan (fedcxr's default DP settings for a run without DP), at `epsilon` if given."""
    cfg = target.cfg
    privacy = cfg.privacy if cfg.privacy.get("name") == "dp" else compose_config(["privacy=dp"]).privacy
    if epsilon is not None:
        privacy = OmegaConf.merge(privacy, {"target_epsilon": epsilon, "noise_multiplier": None})
    return plan(privacy, cfg.federation, len(target.labels[target.hospital]))


def run_scenarios(target: Target, names: list[str], pixels: int = 64, refine: int = 0) -> dict:
    h, out = target.hospital, {}
    everyone = list(range(len(target.labels[h])))
    one_step = replace(target.training, lr=1.0, momentum=0.0, steps=1)
    if "gradient-1" in names:  # one image per gradient, `pixels` attacks on different images, scored together
        trials = [attack(target, target.update(h, [i], one_step), [i], one_step, pixels=1, refine=refine)
                  for i in range(min(pixels, len(everyone)))]
        out["gradient-1"] = merge(trials)
    if "update" in names:
        out["update"] = attack(target, target.update(h, everyone, target.training), everyone, target.training,
                               pixels=pixels, refine=refine)
        out["update"]["gallery_draws"] = gallery_draws(target, FULL_DRAWS, subsets(target, len(everyone),
                                                                                   target.training))
        for k in CURVE_IMAGES:
            if k <= len(everyone):
                out[f"update/{k}-images"] = attack(target, target.update(h, everyone[:k], target.training),
                                                   everyone[:k], target.training, pixels=pixels, refine=refine)
                out[f"update/{k}-images"]["gallery_draws"] = gallery_draws(target, DRAWS, subsets(
                    target, k, target.training))
        k = min(4, len(everyone))
        step = replace(target.training, steps=1)
        out[f"update/{k}-images-1-step"] = attack(target, target.update(h, everyone[:k], step), everyone[:k], step,
                                                  pixels=pixels, refine=refine)
    if "update-dp" in names:
        run_sigma = _dp(target, None).noise_multiplier
        for label, epsilon in (("run", None), ("eps-1", 1.0), ("eps-8", 8.0)):
            dp = _dp(target, epsilon)
            if epsilon is not None and np.isclose(dp.noise_multiplier, run_sigma):
                continue  # the run's own setting: its row already
            clipped = replace(target.training, max_grad_norm=dp.max_grad_norm)
            name = "update-dp" if label == "run" else f"update-dp/{label}"
            out[name] = attack(target, target.update(h, everyone, clipped, dp), everyone, clipped, pixels=pixels,
                               refine=refine)
            out[name]["noise_multiplier"] = dp.noise_multiplier
            out[name]["gallery_draws"] = gallery_draws(target, FULL_DRAWS, subsets(target, len(everyone), clipped, dp))
        dp = _dp(target, None)  # the leakage curve again, under DP at the run's σ
        clipped = replace(target.training, max_grad_norm=dp.max_grad_norm)
        out["update-dp/1-image"] = attack(target, target.update(h, [0], clipped, dp), [0], clipped, pixels=1,
                                          refine=refine)
        for k in CURVE_IMAGES[1:]:
            if k <= len(everyone):
                out[f"update-dp/{k}-images"] = attack(target, target.update(h, everyone[:k], clipped, dp),
                                                      everyone[:k], clipped, pixels=pixels, refine=refine)
                out[f"update-dp/{k}-images"]["gallery_draws"] = gallery_draws(target, DRAWS,
                                                                              subsets(target, k, clipped, dp))
        k, dp = min(CURVE_IMAGES[-1], len(everyone)), _dp(target, 1.0)  # the largest small update, at ε = 1
        clipped = replace(target.training, max_grad_norm=dp.max_grad_norm)
        out[f"update-dp/eps-1/{k}-images"] = attack(target, target.update(h, everyone[:k], clipped, dp), everyone[:k],
                                                    clipped, pixels=pixels, refine=refine)
        out[f"update-dp/eps-1/{k}-images"]["gallery_draws"] = gallery_draws(target, DRAWS, subsets(target, k, clipped,
                                                                                                   dp))
    if "secure-aggregate" in names:
        dp = _dp(target, None) if target.cfg.privacy.get("name") == "dp" else None
        clipped = replace(target.training, max_grad_norm=dp.max_grad_norm if dp else None)
        # the server's view: the mean update over all hospitals; the attack treats it as one batch of
        # everyone's images, and is scored on the audited hospital's images among them
        out["secure-aggregate"] = attack_aggregate(target, aggregate(target, clipped, dp), clipped, pixels, refine)
        out["secure-aggregate"]["hospitals"] = len(target.hospitals)
        out["secure-aggregate"]["gallery_draws"] = gallery_draws(target, AGGREGATE_DRAWS,
                                                                 aggregates(target, clipped, dp))
        if dp is not None:  # what DP adds at this size: the gallery attacks on the same aggregate without it
            out["secure-aggregate"]["without_dp"] = gallery_draws(target, AGGREGATE_DRAWS, aggregates(
                target, target.training))
    return out


def aggregate(target: Target, training: LocalTraining, dp) -> tuple[np.ndarray, np.ndarray]:
    """The mean update over every hospital's training images, each hospital's weighted by its images."""
    total, weights = None, 0
    for hospital in target.hospitals:
        n = len(target.labels[hospital])
        dw, db = target.update(hospital, list(range(n)), training, dp)
        total = (n * dw, n * db) if total is None else (total[0] + n * dw, total[1] + n * db)
        weights += n
    return total[0] / weights, total[1] / weights


def merge(trials: list[dict]) -> dict:
    """Several single-image attacks as one scenario: per-image values side by side, means over them."""
    merged = {"images": 1, "attacks": len(trials), "gallery": trials[0]["gallery"], "chance": trials[0]["chance"],
              "gallery_chance": trials[0]["gallery_chance"], "gallery_size": trials[0]["gallery_size"],
              "iterations": trials[0]["iterations"], "seconds": sum(t["seconds"] for t in trials),
              "per_image": {k: [v for t in trials for v in t["per_image"][k]] for k in trials[0]["per_image"]}}
    for key in ("psnr", "ssim", "mse", "best_match_ssim", "baseline_psnr", "baseline_ssim", "best_other_psnr",
                "best_other_ssim", "psnr_gain", "ssim_gain", "reidentification", "feature_reidentification",
                "feature_cosine", "label_accuracy", "gallery_reidentification", "ranked_reidentification"):
        merged[key] = float(np.mean([t[key] for t in trials]))
    for control in (*CONTROLS, "null_update"):
        merged[control] = {k: float(np.mean([t[control][k] for t in trials])) for k in trials[0][control]}
    merged["_montage"] = tuple(torch.cat([t["_montage"][i] for t in trials]) for i in range(2))
    return merged


def attack_aggregate(target: Target, delta, training: LocalTraining, pixels: int, refine: int = 0) -> dict:
    """The aggregate as one batch of all hospitals' images; scored against the audited hospital's, among
    every hospital's patients (all of whose training images are in the aggregate)."""
    n_all = sum(len(v) for v in target.labels.values())
    labels = recover_labels(delta[1], n_all, target.mean_prediction, training)
    start = time.perf_counter()
    features, iterations = match_features(*delta, target.weight.numpy(), target.bias.numpy(), labels, training)
    everyone = [i for hospital in target.hospitals for i in target.members[hospital]]
    patients, audited = list(range(len(target.gallery))), target.members[target.hospital]
    own = sorted(set(target.patients[target.hospital]) - set(audited))  # the audited site's, as in its own rows
    result = scored(target, features, audited, patients, everyone, pixels, refine, own)
    true_labels = [int(v) for hh in target.hospitals for v in target.labels[hh]]
    result.update({"images": n_all, "label_accuracy": label_accuracy(labels, true_labels),
                   "iterations": {"features": iterations, "pixels": refine}})
    result.update(by_gallery(target, delta, n_all, training, patients, everyone))
    result["null_update"] = null_update(target, delta, n_all, training, audited, patients, everyone, pixels)
    result["seconds"] = time.perf_counter() - start
    return result


def montage(path: Path, truth: torch.Tensor, reconstructions: torch.Tensor, others: torch.Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, reconstructions = truth[:8], reconstructions[:8]
    nearest = others[ssim_matrix(truth, others).argmax(1)]
    n = len(truth)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        for j, (image, name) in enumerate(((truth[i], "true"), (reconstructions[i], "reconstruction"),
                                           (nearest[i], "nearest other patient"))):
            axes[i, j].imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = ["## Inversion audit", "",
             "What the server could reconstruct from what it sees (`python -m src.attacks.invert`): PSNR/SSIM of "
             "the reconstructions paired one-to-one with the true images and their gain over the mean image of "
             "other patients. The pairing looks at the truth, which flatters any reconstruction; in brackets the "
             "same scoring of two controls: the same reconstructions paired with as many patients who were not in "
             "the update (outsiders: what the pairing alone gains), and information-free reconstructions (other "
             "patients' features through the same decoder: null). The gains are over the mean image of the same "
             "site's patients who were not in the update. Re-identified: the share of reconstructions "
             "whose most similar patient (of the hospital that sent the update, every split; of every hospital "
             "for the aggregate) is one whose image was in the update, each patient counted once — no pairing; in "
             "pixels (SSIM) and by the recovered features (the front end is public); chance is naming patients at "
             "random. Gallery: an attacker holding every such patient's record (image and label) names the n whose "
             "gradients best add up to the update (fit) or are each likeliest in it (likelihood ratio). Noise "
             "update: the same attack on noise of the update's scale; a row no better than its noise update shows "
             "nothing. A leak is a gain over the controls and chance, not a raw "
             "PSNR; \"no usable information\" is a claim about this attack at these settings.", "",
             "| scenario | images | PSNR (dB) | gain (outsiders; null) | best other patient | SSIM "
             "| gain (outsiders; null) | re-identified: pixels (null) | features (null; noise update) | chance "
             "| gallery: fit / likelihood ratio (noise update; chance) | feature cos (noise update) | labels | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for name, r in results["scenarios"].items():
        null, out, noise = r.get("null", {}), r.get("outsiders", {}), r.get("null_update", {})
        lines.append(f"| {name} | {r['images']} | {r['psnr']:.1f} | {r['psnr_gain']:+.1f} "
                     f"({out.get('psnr_gain', nan):+.1f}; {null.get('psnr_gain', nan):+.1f}) | "
                     f"{r['best_other_psnr']:.1f} | {r['ssim']:.3f} | {r['ssim_gain']:+.3f} "
                     f"({out.get('ssim_gain', nan):+.3f}; {null.get('ssim_gain', nan):+.3f}) | "
                     f"{r['reidentification']:.2f} ({null.get('reidentification', nan):.2f}) | "
                     f"{r.get('feature_reidentification', nan):.2f} ({null.get('feature_reidentification', nan):.2f}; "
                     f"{noise.get('feature_reidentification', nan):.2f}) | {r['chance']:.3f} | "
                     f"{r.get('gallery_reidentification', nan):.2f} / {r.get('ranked_reidentification', nan):.2f} "
                     f"({noise.get('gallery_reidentification', nan):.2f} / "
                     f"{noise.get('ranked_reidentification', nan):.2f}; "
                     f"{r.get('gallery_chance', nan):.2f}) | {r.get('feature_cosine', nan):.3f} "
                     f"({noise.get('feature_cosine', nan):.3f}) | {r['label_accuracy']:.2f} | {r['seconds']:.0f} |")
    lines += ["", results["verdict"], ""]
    return "\n".join(lines)


def verdict(scenarios: dict, defences: str = "secure aggregation, DP") -> str:
    """The audit's conclusion; `defences` names what protected the audited run's aggregate.

    A row counts as read only if the attack does better on it than on a noise update of the same
    scale (`null_update`) and than chance: below those, its numbers are what the attack makes of
    anything."""
    nan = float("nan")
    text = []
    gate = scenarios.get("gradient-1")
    if gate is not None:
        works = gate.get("feature_reidentification", 0) == 1 and gate["reidentification"] >= 0.9
        text.append(f"Sanity gate (gradient-1, {gate.get('attacks', 1)} images one at a time): re-identified "
                    f"{gate.get('feature_reidentification', nan):.0%} by features, {gate['reidentification']:.0%} in "
                    f"pixels (targets 100% and 90%), PSNR gain over the site's mean image {gate['psnr_gain']:+.1f} dB: "
                    + ("passed — the attack names the patient behind an undefended image's gradient."
                       if works else "NOT passed — this attack is too weak to prove safety."))
    curve = [(k, scenarios[f"update/{k}-images"].get("gallery_draws"), (scenarios.get(f"update-dp/{k}-images") or {})
              .get("gallery_draws")) for k in CURVE_IMAGES[1:] if f"update/{k}-images" in scenarios]
    curve = [(k, plain, dp) for k, plain, dp in curve if plain is not None]
    if curve:
        text.append(f"Updates of {' / '.join(str(k) for k, _, _ in curve)} images ({curve[0][1]['draws']} draws each), "
                    "the share of their members a gallery of records names (joint fit / likelihood ratio; noise "
                    "updates; public updates; chance), without DP: " + " | ".join(drawn(d) for _, d, _ in curve) + ".")
        dp = [(k, d) for k, _, d in curve if d is not None]
        if dp:
            text.append("Under DP at the run's σ: " + " | ".join(drawn(d) for _, d in dp) + ".")
        for name, r in scenarios.items():
            if name.startswith("update-dp/eps-1/") and "gallery_draws" in r:
                text.append(f"At ε = 1, {r['images']} images: {drawn(r['gallery_draws'])}.")
    secure, plain = scenarios.get("secure-aggregate"), scenarios.get("update")
    if plain is not None:
        text.append(f"One hospital's undefended update of all its {plain['images']} images"
                    + (f" ({drawn(plain['gallery_draws'])})" if "gallery_draws" in plain else "") + ": "
                    + ("READ — without secure aggregation or DP the server learns who was in it." if reads(plain)
                       else "not read."))
    if secure is not None:
        null = secure.get("null_update", {})
        draws = secure.get("gallery_draws")
        text.append(f"The server's view under the run's defences ({defences}), the aggregate of {secure['images']} "
                    "images: a gallery names " + (drawn(draws) if draws else "–") + "; features "
                    f"{secure.get('feature_reidentification', nan):.2f} (noise update "
                    f"{null.get('feature_reidentification', nan):.2f}, chance {secure['chance']:.2f}), SSIM gain "
                    f"{secure['ssim_gain'] - secure.get('outsiders', {}).get('ssim_gain', 0.0):+.3f} over outsiders: "
                    + ("ABOVE the baselines — these attacks read the defences' output." if reads(secure) else
                       "no better than noise updates — no usable information for these attacks."))
        bare = secure.get("without_dp")
        if bare is not None:
            both = drawn_read(bare) and draws is not None and drawn_read(draws)
            text.append(f"The same aggregate without DP: {drawn(bare)} — " + (
                "read with and without DP alike: at this size the run's DP does not hide membership from these "
                "attacks (what they find is in the update: public updates, which carry the model's own fit to its "
                "training patients, are named no more than noise)" if both else
                "DP is what hides the members at this size" if drawn_read(bare) else
                "not read either: at this size these attacks cannot show what DP adds to the sum") + ".")
    return " ".join(text)


Z = 2.5  # standard errors a re-identification must clear: a row is read if any of its several measures does


def drawn_read(d: dict) -> bool:
    """Whether a gallery attack beats both its nulls (noise updates, public updates), paired draw by draw, by Z
    standard errors."""
    return any(all(d[key][f"{null}_difference"] > Z * d[key][f"{null}_difference_sd"] / np.sqrt(d["draws"])
                   for null in ("noise", "public")) for key in GALLERY)


def drawn(d: dict) -> str:
    """The gallery attacks over their draws: the mean named by each (noise updates'; public updates'; chance)."""
    fit, ratio = d[GALLERY[0]], d[GALLERY[1]]
    return (f"{fit['mean']:.2f} / {ratio['mean']:.2f} ({fit['noise_mean']:.2f} / {ratio['noise_mean']:.2f}; "
            f"{fit['public_mean']:.2f} / {ratio['public_mean']:.2f}; {d['chance']:.2f}, {d['draws']} draws): "
            + ("READ" if drawn_read(d) else "not read"))


def reads(r: dict) -> bool:
    """Whether the attacks read anything from this row's update: the gallery attacks over their draws
    (`drawn_read`; one draw each where a row has none), or a re-identification by the recovered features or in
    pixels above both chance and its control (a noise update; information-free reconstructions) by Z standard
    errors, or an SSIM gain over the outsiders above 0.02 and Z standard errors."""
    null, chance = r.get("null_update", {}), r.get("chance", 0.0)
    if "gallery_draws" in r and drawn_read(r["gallery_draws"]):
        return True
    picks, named = r.get("images", 1) * r.get("attacks", 1), r.get("measured_in_pixels", r.get("attacks", 1))
    tests = [] if "gallery_draws" in r else [
        (r.get(key), max(r.get("gallery_chance", 0.0), null.get(key, 0.0)), picks) for key in GALLERY]
    tests += [(r.get("feature_reidentification"), max(chance, null.get("feature_reidentification", 0.0)), named),
              (r.get("reidentification"), max(chance, r.get("null", {}).get("reidentification", 0.0)), named)]
    for rate, base, trials in tests:
        if rate is not None and rate > base + Z * (max(base, 1 / trials) * (1 - base) / trials) ** 0.5:
            return True
    per_image = r.get("per_image", {}).get("ssim", [])
    noise = Z * np.sqrt(2) * np.std(per_image) / np.sqrt(len(per_image)) if len(per_image) > 1 else 0.0
    return "ssim_gain" in r and r["ssim_gain"] - r.get("outsiders", {}).get("ssim_gain", 0.0) > max(0.02, noise)


def audit(run_dir: Path, scenarios: list[str], hospital: str | None = None, device: str = "auto",
          pixels: int = 64, refine: int = 0, prior_images: int = 3000) -> dict:
    run_dir = Path(run_dir)
    target = Target(run_dir, hospital, device, prior_images)
    found = run_scenarios(target, scenarios, pixels, refine)
    for name, r in found.items():
        truth, images = r.pop("_montage")
        montage(run_dir / f"attack_{re.sub(r'[^A-Za-z0-9-]+', '_', name)}.png", truth, images, target.others,
                f"{name}: {r['images']} image(s) in the update")
    defences = "secure aggregation, DP" if target.cfg.privacy.get("name") == "dp" else "secure aggregation, no DP"
    results = {"hospital": target.hospital, "scenarios": found, "verdict": verdict(found, defences),
               "out_of_scope": "attacks that craft the global model (malicious server: Robbing the Fed, MedLeak)"}
    (run_dir / "attack.json").write_text(json.dumps(results, indent=1))
    write_section(run_dir / "report.md", markdown(results))
    return results


def write_section(report: Path, section: str) -> None:
    """report.md with its "Inversion audit" section replaced by `section` (added when missing)."""
    text = report.read_text() if report.exists() else ""
    text = re.sub(r"\n*## Inversion audit\n.*?(?=\n## |\Z)", "", text, flags=re.S).rstrip()
    report.write_text((text + "\n\n" if text else "") + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gradient-inversion audit of a run: reads its model.pt, "
                                     "split.json and a hospital's images; writes attack.json, attack_*.png and "
                                     "a section of report.md in the run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--hospital", help="the hospital whose images are attacked (default: the first)")
    parser.add_argument("--pixels", type=int, default=64, help="reconstructions taken to pixels and scored per scenario")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="N iterations of pixel optimisation through the front end after the decoder")
    parser.add_argument("--prior-images", type=int, default=3000,
                        help="public images the attacker's decoder learns from (generated once, public seed)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        results = audit(args.run_dir, args.scenario, args.hospital, args.device, args.pixels, args.refine,
                        args.prior_images)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
