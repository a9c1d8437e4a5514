"""From an archive with bad files to a federation, a split file, and the check report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from src.data import dataset as dataset_module
from src.data.check import decode_all, main as check_main
from src.data.dataset import cache_dir, prepare
from src.data.federation import Federation, build_federation
from tests.data.conftest import chest_like, write_png
from tests.data.dicom_factory import write_dicom

IDENTIFIERS = {"patient_name": "Quixote^Alonso", "patient_id": "MRN-4471902", "birth_date": "19470923"}
IDENTIFIER_TEXT = ("Quixote", "Alonso", "MRN-4471902", "19470923")


def dicom(path: Path, seed: int = 0, **kwargs) -> Path:
    pixels = (chest_like(seed) * 4000).astype(np.uint16)
    return write_dicom(path, pixels, bits_stored=12, **{**IDENTIFIERS, **kwargs})


def dicom_without_pixels(path: Path) -> None:
    ds = pydicom.dcmread(dicom(path))
    del ds.PixelData
    ds.save_as(path)


def archive_with_every_kind_of_bad_file(root: Path) -> None:
    """Two hospitals: good DICOM and PNG, plus one of each bad input a hospital meets."""
    for hospital in ("north", "south"):
        for i in range(6):
            dicom(root / hospital / "normal" / f"d{i}.dcm", i)
            write_png(root / hospital / "viral" / f"p{i}.png", i)
    north = root / "north" / "normal"
    dicom(north / "lateral.dcm", view_position="LL")
    dicom(north / "ct.dcm", modality="CT")
    good = (north / "d0.dcm").read_bytes()
    (north / "truncated.dcm").write_bytes(good[: len(good) // 2])
    (north / "text.dcm").write_text("this is not a DICOM file")
    dicom_without_pixels(north / "nopixels.dcm")
    (root / "south" / "viral" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    write_png(root / "south" / "effusion" / "e0.png")


def test_bad_files_are_skipped_counted_and_named_without_patient_identifiers(tmp_path, config, caplog):
    root = tmp_path / "archive"
    archive_with_every_kind_of_bad_file(root)
    cfg = config("folder", root, "data.classes=[normal,viral]")
    caplog.set_level(logging.WARNING)

    fed = decode_all(build_federation(cfg.data, 2, cfg.seed), cfg.data)

    assert fed.hospitals == ["north", "south"]
    assert len(fed.samples) == 24
    assert all(Path(s.path).name[0] in "dp" for s in fed.samples)
    assert dict(fed.skips.counts["north"]) == {
        "lateral view": 1, "not a radiograph": 1, "not DICOM": 1, "undecodable": 1, "no pixel data": 1}
    assert dict(fed.skips.counts["south"]) == {"unreadable image": 1, "unknown class": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("lateral.dcm", "ct.dcm", "truncated.dcm", "text.dcm", "nopixels.dcm", "broken.png", "effusion"):
        assert sum(name in w for w in warnings) == 1, name
    logged = caplog.text + (tmp_path / "cache").as_posix()
    assert not any(text in logged for text in IDENTIFIER_TEXT)


def test_a_second_preparation_decodes_only_new_or_changed_files(tmp_path, config, monkeypatch):
    """What decoding found is recorded: the next launch skips and counts the same files without decoding
    (and without importing MONAI); a file modified since is decoded again."""
    root = tmp_path / "archive"
    archive_with_every_kind_of_bad_file(root)
    cfg = config("folder", root, "data.classes=[normal,viral]")
    first = decode_all(build_federation(cfg.data, 2, cfg.seed), cfg.data)
    assert not any(t in (cache_dir(cfg.data) / "decoded.json").read_text() for t in IDENTIFIER_TEXT)

    decoded = []
    real = dataset_module.make_dataset
    monkeypatch.setattr(dataset_module, "make_dataset", lambda samples, *a, **k: decoded.extend(samples) or real(samples, *a, **k))
    again = decode_all(build_federation(cfg.data, 2, cfg.seed), cfg.data)
    assert decoded == [] and again.samples == first.samples and again.skips.counts == first.skips.counts

    dicom(root / "north" / "normal" / "lateral.dcm", seed=1)  # rewritten, now a frontal view
    changed = decode_all(build_federation(cfg.data, 2, cfg.seed), cfg.data)
    assert [Path(s.path).name for s in decoded] == ["lateral.dcm"]
    assert len(changed.samples) == len(first.samples) + 1 and "lateral view" not in changed.skips.counts["north"]


def test_split_file_round_trip_reproduces_the_federation(tmp_path, config):
    for i in range(20):
        write_png(tmp_path / "data" / "x" / ("normal" if i % 2 else "bacterial") / f"{i}.png", i)
    cfg = config("folder", tmp_path / "data")
    fed = build_federation(cfg.data, 1, cfg.seed)
    fed.save(tmp_path / "split.json")
    assert not any(t in (tmp_path / "split.json").read_text() for t in IDENTIFIER_TEXT)

    again = build_federation(config("folder", "/unused", f"data.split_file={tmp_path / 'split.json'}").data, 1, 0)

    assert again.samples == fed.samples and again.classes == fed.classes
    assert fed.only("x").samples == fed.select("x")
    with pytest.raises(ValueError, match="not a fedcxr split file"):
        Federation.load(tmp_path / "data" / "x" / "normal" / "1.png")


def test_a_dataset_without_hospitals_is_shared_out_and_split(tmp_path, config):
    for k, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(30):
            write_png(tmp_path / "train" / name / f"person{i}_{'bacteria' if i % 2 else 'virus'}_{k}.jpeg", i)
            write_png(tmp_path / "test" / name / f"person{i}_{'bacteria' if i % 2 else 'virus'}_t{k}.jpeg", i)
    cfg = config("kermany", tmp_path, "federation.num_hospitals=3", "data.partition=dirichlet", "data.alpha=1")
    fed = build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed)

    assert fed.hospitals == ["hospital_1", "hospital_2", "hospital_3"]
    assert len(fed.samples) == 120
    assert {s.split for s in fed.samples} == {"train", "val", "test"}
    assert build_federation(cfg.data, 3, cfg.seed).samples == fed.samples


def test_decoded_images_are_cached_not_decoded_again(tmp_path, config, monkeypatch):
    for i in range(4):
        dicom(tmp_path / "data" / "h" / "normal" / f"{i}.dcm", i)
    cfg = config("folder", tmp_path / "data", "data.image_size=32")
    fed = build_federation(cfg.data, 1, cfg.seed)
    assert len(prepare(fed.samples, cfg.data, fed.skips)) == 4

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr("src.data.transforms.load_image", no_decoding)
    from src.data.dataset import make_dataset

    images = [make_dataset(fed.samples, cfg.data)[i]["image"] for i in range(4)]
    assert all(tuple(im.shape) == (1, 32, 32) for im in images)


def test_check_reports_totals_and_json_and_exits_by_what_it_found(tmp_path, capsys):
    root = tmp_path / "archive"
    archive_with_every_kind_of_bad_file(root)
    dicom(root / "west" / "normal" / "only_lateral.dcm", view_position="LATERAL")
    cache = f"data.cache_dir={tmp_path / 'cache'}"

    assert check_main(["data=folder", f"data.root={root}", cache]) == 2  # south's extra class folder
    assert "hospital 'south' has ['effusion']" in capsys.readouterr().out

    classes = "data.classes=[normal,viral]"
    assert check_main(["data=folder", f"data.root={root}", cache, classes, "--json", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert "west" in out and "lateral view" in out and "unreadable image" in out and "Totals" in out
    assert not any(t in out for t in IDENTIFIER_TEXT)
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["classes"] == ["normal", "viral"] and report["classes_from"] == "data.classes"
    assert {h: (r["usable_total"], r["skipped_total"]) for h, r in report["hospitals"].items()} == {
        "north": (12, 5), "south": (12, 2), "west": (0, 1)}
    assert report["hospitals"]["south"]["skipped"] == {"unknown class": 1, "unreadable image": 1}
    assert sum(report["hospitals"]["north"]["usable"][split]["viral"] for split in ("train", "val", "test")) == 6
    assert report["total"] == {"usable": 24, "skipped": 8}

    (root / "west" / "normal" / "only_lateral.dcm").unlink()
    dicom(root / "west" / "normal" / "frontal.dcm")
    assert check_main(["data=folder", f"data.root={root}", cache, classes]) == 0

    assert check_main(["data=folder", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "data.root" in capsys.readouterr().out
    assert check_main(["data=folder", f"data.root={root}", "data.imagesize=64"]) == 2
    assert check_main(["data=dicomweb"]) == 2


def test_unreadable_png_is_skipped_at_decode(tmp_path, config):
    good = write_png(tmp_path / "h" / "normal" / "ok.png")
    bad = tmp_path / "h" / "normal" / "bad.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:20])
    cfg = config("folder", tmp_path)
    fed = decode_all(build_federation(cfg.data, 1, cfg.seed), cfg.data)
    assert [s.path for s in fed.samples] == [str(good)]
    assert fed.skips.by_reason() == {"unreadable image": 1}
