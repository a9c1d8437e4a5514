"""`python -m src.predict`: one image, the class probabilities of a saved run's model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.models.registry import build_model
from src.predict import load_model, main, predict_image
from src.server.results import RunRecord


def test_predict_prints_probabilities_of_the_saved_model(tmp_path, capsys):
    cfg = OmegaConf.create({"model": {"name": "small_cnn"}, "data": {"image_size": 32}})
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    RunRecord(tmp_path, cfg, ["normal", "bacterial", "viral"]).save(model.state_dict())
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)).save(image)

    assert main([str(image), "--model", str(tmp_path / "model.pt")]) == 0

    printed = dict(re.findall(r"(\w+)\s+([0-9.]+)", capsys.readouterr().out))
    assert set(printed) == {"normal", "bacterial", "viral"}
    assert sum(map(float, printed.values())) == pytest.approx(1.0, abs=0.005)
    loaded, classes, size = load_model(tmp_path / "model.pt")
    expected = predict_image(loaded, size, str(image))
    assert [float(printed[c]) for c in classes] == [round(p, 3) for p in expected]


def test_an_unusable_image_is_a_clear_error(tmp_path, capsys):
    cfg = OmegaConf.create({"model": {"name": "small_cnn"}, "data": {"image_size": 32}})
    RunRecord(tmp_path, cfg, ["normal", "pneumonia"]).save(build_model(cfg.model, 2).state_dict())
    bad = tmp_path / "bad.dcm"
    bad.write_text("not a dicom")
    assert main([str(bad), "--model", str(tmp_path / "model.pt")]) == 2
    assert "not DICOM" in capsys.readouterr().err

