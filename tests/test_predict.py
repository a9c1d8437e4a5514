"""`python -m src.predict`: the class probabilities of a saved run's model, for an image, a folder, a CSV."""

from __future__ import annotations

import csv
import json
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



def test_a_folder_and_a_csv_in_json_with_the_unreadable_named_and_skipped(tmp_path, capsys):
    cfg = OmegaConf.create({"model": {"name": "small_cnn"}, "data": {"image_size": 32}})
    RunRecord(tmp_path, cfg, ["normal", "pneumonia"]).save(build_model(cfg.model, 2).state_dict())
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray((np.random.default_rng(1).random((40, 40)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "broken.dcm").write_text("not a dicom")
    (tmp_path / "list.csv").write_text("image,label\nimages/sub/a.png,normal\n")

    assert main([str(tmp_path / "images"), str(tmp_path / "list.csv"), "--model", str(tmp_path / "model.pt"),
                 "--json", "--out", str(tmp_path / "predictions.csv")]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["image"] for r in rows] == [str(folder / "a.png"), str(folder / "b.png"), str(folder / "a.png")]
    assert all(set(r["probabilities"]) == {"normal", "pneumonia"} and r["seconds"] >= 0 for r in rows)
    assert rows[0]["probabilities"] == rows[2]["probabilities"]
    assert "broken.dcm" in out.err and "1 of 4 image(s) skipped" in out.err
    with open(tmp_path / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["path"] for r in table] == [r["image"] for r in rows]
    for row, printed in zip(table, rows):
        p = {c: float(row[f"p_{c}"]) for c in ("normal", "pneumonia")}
        assert p == pytest.approx(printed["probabilities"], abs=1e-6)
        assert row["predicted"] == max(p, key=p.get)
