"""Each layout on a small tree written in that layout."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from src.data.layouts import scan_layout
from tests.data.conftest import write_png
from tests.data.dicom_factory import write_dicom


def labels_by_name(scan):
    return Counter(scan.classes[s.label] for s in scan.samples)


def test_folder_hospitals_splits_and_unknown_classes(tmp_path, config):
    for i in range(3):
        write_png(tmp_path / "north" / "normal" / f"n{i}.png", i)
        write_png(tmp_path / "north" / "viral" / f"v{i}.png", i)
        write_png(tmp_path / "south" / "train" / "bacterial" / f"b{i}.png", i)
    write_png(tmp_path / "south" / "test" / "normal" / "t.png")
    write_png(tmp_path / "south" / "train" / "effusion" / "e.png")  # not a known class
    (tmp_path / "north" / "normal" / "notes.txt").write_text("not an image")
    write_dicom(tmp_path / "north" / "normal" / "0001", np.zeros((8, 8), np.uint16))  # DICOM without suffix

    scan = scan_layout(config("folder", tmp_path, "data.classes=[normal,bacterial,viral]").data)

    assert scan.hospitals == ["north", "south"]
    assert labels_by_name(scan) == {"normal": 5, "viral": 3, "bacterial": 3}
    assert {s.split for s in scan.samples if s.hospital == "north"} == {None}
    assert Counter(s.split for s in scan.samples if s.hospital == "south") == {"train": 3, "test": 1}
    assert scan.skips.counts["south"]["unknown class"] == 1
    assert scan.skips.counts["north"]["not an image file"] == 1


def test_folder_classes_are_the_class_folders_the_same_at_every_hospital(tmp_path, config):
    """As torchvision's ImageFolder: sorted sub-folder names, across splits; `data.classes` restricts
    and orders them; a hospital with a different set is one clear error naming it and the folder."""
    for hospital in ("north", "south"):
        write_png(tmp_path / hospital / "train" / "pneumonia" / "p.png")
        write_png(tmp_path / hospital / "test" / "normal" / "n.png")
    write_png(tmp_path / "west" / "pneumonia" / "p.png")
    write_png(tmp_path / "west" / "normal" / "n.png")

    scan = scan_layout(config("folder", tmp_path).data)
    assert scan.classes == ["normal", "pneumonia"] and labels_by_name(scan) == {"normal": 3, "pneumonia": 3}
    assert scan_layout(config("folder", tmp_path, "data.classes=[pneumonia]").data).classes == ["pneumonia"]

    write_png(tmp_path / "south" / "train" / "Pneumonia " / "q.png")
    with pytest.raises(ValueError, match=r"hospital 'south' has \['Pneumonia '\] that 'north' has not"):
        scan_layout(config("folder", tmp_path).data)
    (tmp_path / "south" / "train" / "Pneumonia " / "q.png").unlink()
    (tmp_path / "south" / "train" / "Pneumonia ").rmdir()
    (tmp_path / "west" / "normal" / "n.png").unlink()
    (tmp_path / "west" / "normal").rmdir()
    with pytest.raises(ValueError, match=r"hospital 'west' lacks \['normal'\]"):
        scan_layout(config("folder", tmp_path).data)


@pytest.mark.parametrize("num_classes, expected", [
    (3, {"normal": 2, "bacterial": 2, "viral": 1}),
    (2, {"normal": 2, "pneumonia": 4}),
])
def test_kermany_derives_bacterial_and_viral_from_file_names(tmp_path, config, num_classes, expected):
    write_png(tmp_path / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    write_png(tmp_path / "test" / "NORMAL" / "IM-0117-0001.jpeg")
    write_png(tmp_path / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    write_png(tmp_path / "test" / "PNEUMONIA" / "person2_bacteria_4.jpeg")
    write_png(tmp_path / "train" / "PNEUMONIA" / "person3_virus_6.jpeg")
    write_png(tmp_path / "train" / "PNEUMONIA" / "person4_unsure_7.jpeg")

    scan = scan_layout(config("kermany", tmp_path, f"data.num_classes={num_classes}").data)

    assert labels_by_name(scan) == expected
    assert {s.split for s in scan.samples} == {"train", "test"}
    assert scan.skips.total == (1 if num_classes == 3 else 0)


def test_covid_radiography_reads_images_and_ignores_masks(tmp_path, config):
    for folder, n in {"COVID": 2, "Normal": 3, "Viral Pneumonia": 1, "Lung_Opacity": 2}.items():
        for i in range(n):
            write_png(tmp_path / folder / "images" / f"{folder}-{i}.png", i)
            write_png(tmp_path / folder / "masks" / f"{folder}-{i}.png", i)
    write_png(tmp_path / "Tuberculosis" / "images" / "tb-1.png")

    scan = scan_layout(config("covid_radiography", tmp_path).data)

    assert labels_by_name(scan) == {"covid": 2, "normal": 3, "viral_pneumonia": 1, "lung_opacity": 2}
    assert scan.skips.by_reason() == {"unknown class": 1}


def test_rsna_takes_the_max_target_per_patient(tmp_path, config):
    images = tmp_path / "stage_2_train_images"
    for pid in ("p-a", "p-b", "p-c"):
        write_dicom(images / f"{pid}.dcm", np.full((8, 8), 100, np.uint16), patient_id=pid)
    rows = [("p-a", "", "", "", "", 0), ("p-b", 10, 10, 5, 5, 1), ("p-b", 30, 30, 5, 5, 1),
            ("p-d", 1, 1, 1, 1, 1)]  # p-c has no label row, p-d no image
    with open(tmp_path / "stage_2_train_labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        writer.writerows(rows)

    scan = scan_layout(config("rsna", tmp_path).data)

    assert {s.path.rsplit("/", 1)[1]: scan.classes[s.label] for s in scan.samples} == {
        "p-a.dcm": "normal", "p-b.dcm": "pneumonia"}
    assert scan.skips.by_reason() == {"no label": 1, "missing file": 1}


def test_csv_manifest_with_hospitals_and_relative_paths(tmp_path, config):
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "b.png", 1)
    write_png(tmp_path / "img" / "c.png", 2)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,hospital\n"
        "img/a.png,normal,h1\n"
        f"{tmp_path / 'img' / 'b.png'},pneumonia,h2\n"
        "img/c.png,effusion,h2\n"
        "img/missing.png,normal,h1\n"
    )

    scan = scan_layout(config("csv", manifest, "data.classes=[normal,pneumonia]").data)

    assert [(s.hospital, scan.classes[s.label]) for s in scan.samples] == [("h1", "normal"), ("h2", "pneumonia")]
    assert scan.hospitals == ["h1", "h2"]
    assert scan.skips.by_reason() == {"unknown class": 1, "missing file": 1}


def test_csv_manifest_without_required_columns_is_refused(tmp_path, config):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,diagnosis\na.png,normal\n")
    with pytest.raises(ValueError, match="expected columns path,label"):
        scan_layout(config("csv", manifest).data)


def test_medmnist_npz_members(tmp_path, config):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 6, "val": 2, "test": 3}.items():
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)

    scan = scan_layout(config("medmnist", tmp_path / "pneumoniamnist.npz").data)

    assert Counter(s.split for s in scan.samples) == {"train": 6, "val": 2, "test": 3}
    assert [s.label for s in scan.samples if s.split == "test"] == list(arrays["test_labels"][:, 0])
    assert scan.samples[0].path.endswith("pneumoniamnist.npz::train:0")


def test_unknown_layout_and_missing_root_are_clear_errors(tmp_path, config):
    cfg = config("folder", tmp_path / "nowhere").data
    with pytest.raises(FileNotFoundError, match="data.root"):
        scan_layout(cfg)
    cfg.layout = "dicomweb"
    with pytest.raises(ValueError, match="unknown layout 'dicomweb'"):
        scan_layout(cfg)
