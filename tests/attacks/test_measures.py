"""Scoring reconstructions: one-to-one pairing, baselines without patient information, re-identification."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.attacks.invert import markdown, verdict, write_section
from src.attacks.measures import chance_of_naming, label_accuracy, leakage, ssim_matrix


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, 32).repeat(32, 1)[None, None]  # aligned, like radiographs
    return (0.6 * base + 0.4 * torch.rand(n, 1, 32, 32, generator=g)).clamp(0, 1)


def test_shuffled_near_copies_are_paired_back_and_reidentified():
    truth, others = _images(4, 0), _images(10, 1)
    gallery = torch.cat([_images(6, 2), truth])
    noisy = (truth + 0.01 * torch.randn_like(truth)).clamp(0, 1)
    r = leakage(noisy[[2, 0, 3, 1]], truth, gallery, [6, 7, 8, 9], others)
    assert r["reidentification"] == 1.0 and r["chance"] == pytest.approx(1 - 0.9 ** 4)
    assert r["psnr"] > 35 and r["psnr_gain"] > 15 and r["ssim_gain"] > 0.3
    assert r["best_other_psnr"] < r["psnr"]


def test_reidentification_does_not_pair_with_the_truth():
    """Copies of patients who were not in the update are paired with the update's images for PSNR/SSIM,
    but name only non-members: nothing re-identified (a truth-aware pairing would name their pairs)."""
    truth, outsiders, others = _images(4, 0), _images(4, 3), _images(10, 1)
    gallery = torch.cat([truth, outsiders])
    r = leakage(outsiders, truth, gallery, [0, 1, 2, 3], others)
    assert r["reidentification"] == 0.0 and r["chance"] == pytest.approx(1 - (7 / 8) ** 4)
    assert r["per_image"]["names_a_member"] == [False] * 4


def test_a_control_measured_without_reidentification_or_best_others_has_the_same_gains():
    """The audit's controls skip the costliest measures, which their rows do not report; what they
    report is what the full measurement gives."""
    truth, others = _images(4, 0), _images(10, 1)
    noisy = (truth + 0.05 * torch.randn_like(truth, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    full = leakage(noisy, truth, torch.cat([_images(6, 2), truth]), [6, 7, 8, 9], others)
    control = leakage(noisy, truth, None, [], others, best_other=False)
    assert {k: control[k] for k in ("psnr_gain", "ssim_gain", "psnr", "ssim")} == {
        k: full[k] for k in ("psnr_gain", "ssim_gain", "psnr", "ssim")}
    assert not {"reidentification", "best_other_psnr"} & set(control)


def test_the_ssim_matrix_is_monais_ssim_of_every_pair():
    from src.attacks.measures import _SSIM

    a, b = _images(3, 5), _images(4, 6)
    expected = [[float(_SSIM(x[None], y[None])) for y in b] for x in a]
    np.testing.assert_allclose(ssim_matrix(a, b), expected, atol=1e-6)


def test_chance_is_naming_patients_at_random():
    rng = np.random.default_rng(0)
    draws = [len(set(rng.integers(0, 50, 8)) & set(range(10))) / 8 for _ in range(20000)]
    assert chance_of_naming(10, 50, 8) == pytest.approx(np.mean(draws), abs=0.005)
    assert chance_of_naming(1, 200, 1) == pytest.approx(1 / 200)


def test_the_mean_of_other_patients_gains_nothing_and_identifies_no_one():
    truth, others = _images(4, 0), _images(50, 1)
    mean = others.mean(0, keepdim=True).repeat(4, 1, 1, 1)
    r = leakage(mean, truth, truth, [0, 1, 2, 3], others)
    assert abs(r["psnr_gain"]) < 1e-4 and abs(r["ssim_gain"]) < 1e-4
    assert r["reidentification"] <= 0.25  # identical reconstructions can name at most one patient


def test_labels_are_scored_as_multisets():
    assert label_accuracy([0, 0, 1], [1, 0, 0]) == 1.0
    assert label_accuracy([2, 2, 2], [0, 1, 2]) == 1 / 3


def test_the_report_section_is_added_once_and_replaced(tmp_path):
    row = {"images": 1, "psnr": 24.0, "psnr_gain": 9.0, "best_other_psnr": 18.0, "ssim": 0.8, "ssim_gain": 0.25,
           "reidentification": 1.0, "chance": 0.01, "feature_cosine": 1.0, "label_accuracy": 1.0, "seconds": 3.0}
    results = {"scenarios": {"gradient-1": row}, "verdict": verdict({"gradient-1": row})}
    assert "NOT passed" in results["verdict"]
    report = tmp_path / "report.md"
    report.write_text("# Run\n\n## Final\n\ntext\n")
    write_section(report, markdown(results))
    write_section(report, markdown(results))
    text = report.read_text()
    assert text.count("## Inversion audit") == 1 and text.startswith("# Run") and "| gradient-1 | 1 | 24.0 |" in text


QUIET = "no better than noise updates"
LOUD = "ABOVE the baselines"


def aggregate(**changes) -> dict:
    """A secure-aggregate row at chance and at its controls, with `changes`."""
    row = {"images": 584, "ssim_gain": 0.0, "chance": 0.5, "measured_in_pixels": 64, "reidentification": 0.5,
           "feature_reidentification": 0.5, "gallery_reidentification": 0.65, "ranked_reidentification": 0.65,
           "gallery_chance": 0.65, "gallery_size": 900, "null": {"reidentification": 0.5, "ssim_gain": 0.0},
           "null_update": {"feature_reidentification": 0.5, "gallery_reidentification": 0.65,
                           "ranked_reidentification": 0.65}}
    return {**row, **changes}


def test_the_verdict_on_the_defaults_compares_with_chance_and_a_noise_update():
    assert QUIET in verdict({"secure-aggregate": aggregate(reidentification=0.6)})
    assert LOUD in verdict({"secure-aggregate": aggregate(reidentification=0.9)})
    assert LOUD in verdict({"secure-aggregate": aggregate(ssim_gain=0.05)})
    assert LOUD in verdict({"secure-aggregate": aggregate(gallery_reidentification=0.8)})
    # above chance, but the attack names as many patients from noise: nothing read
    assert QUIET in verdict({"secure-aggregate": aggregate(gallery_reidentification=0.8, null_update={
        "feature_reidentification": 0.5, "gallery_reidentification": 0.8, "ranked_reidentification": 0.65})})
    assert "under the run's defences (secure aggregation, no DP)" in verdict(
        {"secure-aggregate": aggregate()}, "secure aggregation, no DP")


def test_reidentification_by_features_counts_too():
    assert LOUD in verdict({"secure-aggregate": aggregate(feature_reidentification=1.0)})


def test_the_ssim_gain_counts_over_what_the_pairing_gains_with_outsiders():
    assert QUIET in verdict({"secure-aggregate": aggregate(ssim_gain=0.15, outsiders={"ssim_gain": 0.14})})
    assert LOUD in verdict({"secure-aggregate": aggregate(ssim_gain=0.15, outsiders={"ssim_gain": 0.05})})


def test_small_updates_are_read_only_where_their_draws_beat_the_noise_updates():
    unread = {**aggregate(), "images": 195}
    assert "all its 195 images: not read" in verdict({"update": unread})
    assert "all its 195 images: READ" in verdict({"update": {**unread, "ranked_reidentification": 0.95}})
    def draws(mean: float, public: float = 0.05) -> dict:
        attack = {"mean": mean, "noise_mean": 0.05, "noise_difference": mean - 0.05, "noise_difference_sd": 0.1,
                  "public_mean": public, "public_difference": mean - public, "public_difference_sd": 0.1}
        return {"draws": 30, "chance": 0.02, "gallery_reidentification": attack, "ranked_reidentification": attack}

    text = verdict({"update/4-images": {"gallery_draws": draws(0.9)},
                    "update-dp/4-images": {"gallery_draws": draws(0.08)}})
    assert "without DP: 0.90 / 0.90 (0.05 / 0.05; 0.05 / 0.05; 0.02, 30 draws): READ" in text
    # 0.03 < 2.5 × 0.1 / √30
    assert "run's σ: 0.08 / 0.08 (0.05 / 0.05; 0.05 / 0.05; 0.02, 30 draws): not read" in text
    # above the noise updates, but public updates (the model's own fit) are named as often: not read
    assert "READ" not in verdict({"update/4-images": {"gallery_draws": draws(0.9, public=0.88)}})


def test_a_run_without_dp_is_audited_at_the_default_dp_settings():
    from types import SimpleNamespace

    from src.attacks.invert import _dp
    from src.config import compose_config

    for privacy in ("privacy=none", "privacy=dp"):
        target = SimpleNamespace(cfg=compose_config([privacy]), labels={"h": torch.zeros(200)}, hospital="h")
        strict, loose = _dp(target, 1.0), _dp(target, 8.0)
        assert strict.noise_multiplier > loose.noise_multiplier > 0
        assert _dp(target, None).noise_multiplier == pytest.approx(loose.noise_multiplier)  # the default ε is 8
