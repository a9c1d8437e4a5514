"""`python run_simulation.py` end to end: real Flower processes, results on disk, bad configs refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, *overrides: str, timeout: float = 480) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={run_dir}",
         f"data.root={tmp_path / 'synthetic'}", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
    )
    return proc, run_dir


@pytest.mark.parametrize("override, message", [
    ("model=small_cnn model.name=vit_huge", "model.name"),
    ("federation.rounds=0", "federation.rounds"),
    ("data=folder data.root=/nonexistent/archive", "data.root"),
])
def test_bad_configs_are_refused_before_any_process_starts(tmp_path, override, message):
    proc, run_dir = run(tmp_path, *override.split(), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout
    assert not (run_dir / "federation").exists()


def test_more_hospitals_than_images_is_refused(tmp_path):
    from PIL import Image

    for name in ("NORMAL", "PNEUMONIA"):
        for i in range(3):
            path = tmp_path / "kermany" / "train" / name / f"person{i}_bacteria_{i}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (32, 32), 40 * i).save(path)
    proc, run_dir = run(tmp_path, "data=kermany", f"data.root={tmp_path / 'kermany'}",
                        "federation.num_hospitals=40", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "federation.num_hospitals" in proc.stdout
    assert not (run_dir / "federation").exists()


def test_an_unknown_key_is_refused_by_hydra(tmp_path):
    proc, _ = run(tmp_path, "federation.roundz=3", timeout=120)
    assert proc.returncode != 0
    assert "roundz" in proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["deployment", "simulation"])
def test_two_hospitals_two_rounds(tmp_path, mode):
    proc, run_dir = run(tmp_path, f"federation.mode={mode}", "federation.num_hospitals=2",
                        "federation.rounds=2", "data.images_per_hospital=40", "data.image_size=32")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 2/2" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for r in results["rounds"]:
        assert set(r["hospitals"]) == {"hospital_1", "hospital_2"}
        assert 0.0 <= r["global"]["accuracy"] <= 1.0
        assert r["global"]["num_examples"] == sum(h["num_test_examples"] for h in r["hospitals"].values())
        assert all(h["num_examples"] > 0 for h in r["hospitals"].values())
        assert {"train", "aggregate", "total"} <= set(r["time"])
    assert results["config"]["federation"]["mode"] == mode
    saved = torch.load(run_dir / "model.pt", weights_only=False)
    assert saved["classes"] == ["normal", "bacterial", "viral"]
    from src.models.registry import build_model
    from omegaconf import OmegaConf

    build_model(OmegaConf.create(saved["model"]), 3).load_state_dict(saved["state_dict"])
