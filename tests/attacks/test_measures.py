"""Scoring reconstructions: one-to-one pairing, baselines without patient information, re-identification."""

from __future__ import annotations

import torch

from src.attacks.invert import markdown, verdict, write_section
from src.attacks.measures import label_accuracy, leakage


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, 32).repeat(32, 1)[None, None]  # aligned, like radiographs
    return (0.6 * base + 0.4 * torch.rand(n, 1, 32, 32, generator=g)).clamp(0, 1)


def test_shuffled_near_copies_are_paired_back_and_reidentified():
    truth, others = _images(4, 0), _images(10, 1)
    candidates = torch.cat([truth, _images(6, 2)])
    noisy = (truth + 0.01 * torch.randn_like(truth)).clamp(0, 1)
    r = leakage(noisy[[2, 0, 3, 1]], truth, candidates, [0, 1, 2, 3], others)
    assert r["reidentification"] == 1.0 and r["chance"] == 0.1
    assert r["psnr"] > 35 and r["psnr_gain"] > 15 and r["ssim_gain"] > 0.3
    assert r["best_other_psnr"] < r["psnr"]


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
