"""`python -m src.attacks.invert <run dir> [--scenario ...]`: what the server could reconstruct from updates.

Runs against the run's final global model and one hospital's real training images; the
attacker's view is simulated at the hospital, which has the ground truth to score it.
The hospital's update is made by its own training code (`train_epochs`: the run's
optimiser, learning rate, momentum, steps, batch, DP-SGD with a secret generator).

Scenarios (`src/attacks/reconstruct.py` for the attack, `measures.py` for the scores):

- `gradient-1`   one image, one gradient, no defence: the sanity gate; the attack must work here;
- `update`       the hospital's round update as `strategy=fedavg` shows it, no DP; and a
                 leakage curve over images per update (1, 4, 16, 64) and local work (1 step);
- `update-dp`    the same under DP-SGD at the run's σ, and at ε = 1 and 8; and one image at the run's σ;
- `secure-aggregate`  what the server sees under the default: the sum over the round's hospitals, under DP.

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
    match_features,
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
        self.features = {h: self.gallery_features[idx] for h, idx in self.members.items()}
        # no hospital's patients: the public reference set
        _, self.others, reference = self._cached(reference_samples(self.cfg.reference), size, "reference-features")
        self.mean_prediction = torch.softmax(reference @ self.weight.T + self.bias, 1).mean(0).numpy()
        # the attacker's prior: public images only (the generator under a seed of its own, as an attacker
        # would gather an open chest X-ray set), a larger set than the reference statistics need
        _, prior, self.prior_features = self._cached(reference_samples(OmegaConf.create({
            "root": f"{self.cfg.reference.root}_attack_prior_{prior_images}", "images": prior_images,
            "seed": int(self.cfg.reference.seed) + 1})), size, "reference-features")
        self.decoder = Decoder(self.prior_features, prior)
        fed = self.cfg.federation
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
        head = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0]).double()
        head.load_state_dict({"weight": self.weight, "bias": self.bias})
        data = _Features(self.features[hospital][index], self.labels[hospital][index])
        loader = torch.utils.data.DataLoader(data, batch_size=len(index))  # full batch, as the default trains
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
    labels = recover_labels(delta[1], n, target.mean_prediction, training)
    if n == 1:
        features, iterations = features_of_one(*delta)[None], 0
    else:
        features, iterations = match_features(*delta, target.weight.numpy(), target.bias.numpy(), labels, training)
    members = [target.members[hospital][i] for i in index]
    result = scored(target, features, members, target.patients[hospital], members, pixels, refine)
    result.update({"label_accuracy": label_accuracy(labels, target.labels[hospital][index].tolist()),
                   "iterations": {"features": iterations, "pixels": refine}, "seconds": time.perf_counter() - start})
    return result


def scored(target: Target, features: np.ndarray, truth: list[int], site: list[int], members: list[int],
           pixels: int, refine: int) -> dict:
    """The reconstructions `features` scored against the true images (gallery positions `truth`), among the
    `site`'s patients of whom `members` were in the update; beside two controls that share the pairing's
    look at the truth — the same reconstructions paired with as many `outsiders` (patients of the site who
    were not in the update: what the pairing alone gains with these reconstructions) and information-free
    reconstructions (other patients' features: the null, also for re-identification's base rate). A
    control measures only what its row reports (`CONTROLS`)."""
    result = score(target, features, truth, site, members, pixels, refine)
    # the controls' draws are seeded by the images scored: reproducible, and each of several one-image
    # attacks gets outsiders and null images of its own rather than the same ones every time
    rng = np.random.default_rng([int(t) for t in truth])
    outside = sorted(set(site) - set(members))
    if outside:
        pick = rng.choice(len(outside), min(len(truth), len(outside)), replace=False)
        outsiders = score(target, features, [outside[i] for i in sorted(pick)], site, members, pixels, refine,
                          control=True, reidentify=False)
        result["outsiders"] = {k: outsiders[k] for k in CONTROLS["outsiders"]}
    null = score(target, target.null_features(len(features), rng), truth, site, members, pixels, refine,
                 control=True)
    result["null"] = {k: null[k] for k in CONTROLS["null"]}
    return result


def score(target: Target, features: np.ndarray, truth: list[int], site: list[int], members: list[int],
          pixels: int, refine: int, control: bool = False, reidentify: bool = True) -> dict:
    """Pair reconstructions and true images one-to-one by their features (scoring only: it sees the truth),
    take the pairs of the first `pixels` true images to pixels, measure them; a `control` skips the
    true images' comparison with every other patient, and `reidentify=False` the naming of patients."""
    truth_features = target.gallery_features[truth].numpy()
    distance = ((features[:, None, :] - truth_features[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(distance)  # every true image paired when there are more reconstructions
    order = np.argsort(cols)[:pixels]
    chosen, true = rows[order], [truth[c] for c in cols[order]]
    images = to_pixels(target, features[chosen], refine)
    position = {patient: i for i, patient in enumerate(site)}
    in_site = [position[m] for m in members]
    result = leakage(images, target.gallery[true], target.gallery[site] if reidentify else None, in_site,
                     target.others, best_other=not control)
    cosine = (features[rows] * truth_features[cols]).sum(1) / (
        np.linalg.norm(features[rows], axis=1) * np.linalg.norm(truth_features[cols], axis=1) + 1e-12)
    result.update({"images": len(truth), "measured_in_pixels": len(chosen), "feature_cosine": float(cosine.mean())})
    if reidentify:
        result["feature_reidentification"] = feature_reidentification(target, features[chosen], site, in_site)
    result["_montage"] = (target.gallery[true], images)
    return result


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
        for k in CURVE_IMAGES:
            if k <= len(everyone):
                out[f"update/{k}-images"] = attack(target, target.update(h, everyone[:k], target.training),
                                                   everyone[:k], target.training, pixels=pixels, refine=refine)
        k = min(4, len(everyone))
        step = replace(target.training, steps=1)
        out[f"update/{k}-images-1-step"] = attack(target, target.update(h, everyone[:k], step), everyone[:k], step,
                                                  pixels=pixels, refine=refine)
    if "update-dp" in names:
        for label, epsilon in (("run", None), ("eps-1", 1.0), ("eps-8", 8.0)):
            dp = _dp(target, epsilon)
            clipped = replace(target.training, max_grad_norm=dp.max_grad_norm)
            name = "update-dp" if label == "run" else f"update-dp/{label}"
            out[name] = attack(target, target.update(h, everyone, clipped, dp), everyone, clipped, pixels=pixels,
                               refine=refine)
            out[name]["noise_multiplier"] = dp.noise_multiplier
        dp = _dp(target, None)
        clipped = replace(target.training, max_grad_norm=dp.max_grad_norm)
        out["update-dp/1-image"] = attack(target, target.update(h, [0], clipped, dp), [0], clipped, pixels=1,
                                          refine=refine)
    if "secure-aggregate" in names:
        dp = _dp(target, None) if target.cfg.privacy.get("name") == "dp" else None
        clipped = replace(target.training, max_grad_norm=dp.max_grad_norm if dp else None)
        total, weights = None, 0
        for hospital in target.hospitals:
            idx = list(range(len(target.labels[hospital])))
            dw, db = target.update(hospital, idx, clipped, dp)
            n = len(idx)
            total = (n * dw, n * db) if total is None else (total[0] + n * dw, total[1] + n * db)
            weights += n
        # the server's view: the mean update over all hospitals; the attack treats it as one batch of
        # everyone's images, and is scored on the audited hospital's images among them
        mean = (total[0] / weights, total[1] / weights)
        out["secure-aggregate"] = attack_aggregate(target, mean, clipped, pixels, refine)
        out["secure-aggregate"]["hospitals"] = len(target.hospitals)
    return out


def merge(trials: list[dict]) -> dict:
    """Several single-image attacks as one scenario: per-image values side by side, means over them."""
    merged = {"images": 1, "attacks": len(trials), "gallery": trials[0]["gallery"], "chance": trials[0]["chance"],
              "iterations": trials[0]["iterations"], "seconds": sum(t["seconds"] for t in trials),
              "per_image": {k: [v for t in trials for v in t["per_image"][k]] for k in trials[0]["per_image"]}}
    for key in ("psnr", "ssim", "mse", "best_match_ssim", "baseline_psnr", "baseline_ssim", "best_other_psnr",
                "best_other_ssim", "psnr_gain", "ssim_gain", "reidentification", "feature_reidentification",
                "feature_cosine", "label_accuracy"):
        merged[key] = float(np.mean([t[key] for t in trials]))
    for control in CONTROLS:
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
    result = scored(target, features, target.members[target.hospital], list(range(len(target.gallery))), everyone,
                    pixels, refine)
    true_labels = [int(v) for hh in target.hospitals for v in target.labels[hh]]
    result.update({"images": n_all, "label_accuracy": label_accuracy(labels, true_labels),
                   "iterations": {"features": iterations, "pixels": refine}, "seconds": time.perf_counter() - start})
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
             "patients' features through the same decoder: null). Re-identified: the share of reconstructions "
             "whose most similar patient (of the hospital that sent the update, every split; of every hospital "
             "for the aggregate) is one whose image was in the update, each patient counted once — no pairing; in "
             "pixels (SSIM) and by the recovered features (the front end is public); chance is naming patients at "
             "random. A leak is a gain over the controls and chance, not a raw PSNR; \"no usable information\" is "
             "a claim about this attack at these settings.", "",
             "| scenario | images | PSNR (dB) | gain (outsiders; null) | best other patient | SSIM "
             "| gain (outsiders; null) | re-identified: pixels (null) | features (null) | chance | feature cos "
             "| labels | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for name, r in results["scenarios"].items():
        null, out = r.get("null", {}), r.get("outsiders", {})
        lines.append(f"| {name} | {r['images']} | {r['psnr']:.1f} | {r['psnr_gain']:+.1f} "
                     f"({out.get('psnr_gain', nan):+.1f}; {null.get('psnr_gain', nan):+.1f}) | "
                     f"{r['best_other_psnr']:.1f} | {r['ssim']:.3f} | {r['ssim_gain']:+.3f} "
                     f"({out.get('ssim_gain', nan):+.3f}; {null.get('ssim_gain', nan):+.3f}) | "
                     f"{r['reidentification']:.2f} ({null.get('reidentification', nan):.2f}) | "
                     f"{r.get('feature_reidentification', nan):.2f} ({null.get('feature_reidentification', nan):.2f})"
                     f" | {r['chance']:.3f} | {r.get('feature_cosine', nan):.3f} | {r['label_accuracy']:.2f} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", results["verdict"], ""]
    return "\n".join(lines)


def verdict(scenarios: dict, defences: str = "secure aggregation, DP") -> str:
    """The audit's conclusion; `defences` names what protected the audited run's aggregate."""
    nan = float("nan")
    gate = scenarios.get("gradient-1")
    text = []
    if gate is not None:
        works = gate["psnr_gain"] >= 10 and max(gate["reidentification"], gate.get("feature_reidentification", 0)) == 1
        text.append(f"Sanity gate (gradient-1, {gate.get('attacks', 1)} images one at a time): PSNR gain "
                    f"{gate['psnr_gain']:+.1f} dB (target +10), re-identified {gate['reidentification']:.0%} in "
                    f"pixels, {gate.get('feature_reidentification', nan):.0%} by features (target 100%): " + (
                        "passed — the attack reconstructs an undefended image and names its patient." if works else
                        "NOT passed — this attack is too weak to prove safety."))
    secure = scenarios.get("secure-aggregate")
    if secure is not None:
        null, out = secure.get("null", {}), secure.get("outsiders", {})
        gain = secure["ssim_gain"] - out.get("ssim_gain", 0.0)
        hidden = (at_chance(secure, "reidentification") and at_chance(secure, "feature_reidentification")
                  and gain <= 0.02)
        text.append(f"The run's defences ({defences}): re-identification {secure['reidentification']:.3f} "
                    f"in pixels, {secure.get('feature_reidentification', nan):.3f} by features (chance "
                    f"{secure['chance']:.3f}; information-free reconstructions {null.get('reidentification', nan):.3f}"
                    f" and {null.get('feature_reidentification', nan):.3f}); SSIM gain {secure['ssim_gain']:+.3f}, "
                    f"{gain:+.3f} over the same reconstructions paired with outsiders (target ≤ 0.02): " + (
                        "at the baselines — no usable information for this attack." if hidden else
                        "ABOVE the baselines — these defences leak to this attack."))
    return " ".join(text)


def at_chance(r: dict, key: str) -> bool:
    """A re-identification rate within two standard errors of naming patients at random."""
    p, n = r["chance"], r.get("measured_in_pixels", r.get("attacks", 1))
    return r.get(key, 0.0) <= p + 2 * (p * (1 - p) / n) ** 0.5


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
