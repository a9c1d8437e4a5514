"""Synthetic hospitals: real, decodable DICOM, deterministic, heterogeneous, anonymous,
with the radiological signs where they belong."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, UID

from src.data import synthetic
from src.data.images import load_image
from src.data.synthetic import CLASSES, ensure_synthetic, generate, hospital_site, render

HOSPITALS, PER_HOSPITAL = 3, 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, HOSPITALS, PER_HOSPITAL, seed=0)
    return out


@pytest.fixture(scope="module")
def files(root):
    return sorted(root.rglob("*.dcm"))


@pytest.fixture(scope="module")
def headers(files):
    return {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}


def pixels(root) -> dict:
    return {f.relative_to(root): pydicom.dcmread(f).pixel_array for f in sorted(root.rglob("*.dcm"))}


def test_folders_are_hospitals_then_classes(root, files):
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"hospital_{i}" for i in range(1, 4)]
    for hospital in root.glob("hospital_*"):
        assert sorted(p.name for p in hospital.iterdir()) == sorted(CLASSES)
    assert len(files) == HOSPITALS * PER_HOSPITAL
    assert all(f.suffix == ".dcm" and UID(f.stem).is_valid for f in files)
    record = json.loads((root / "synthetic.json").read_text())
    assert record | {"hospitals": 3, "images_per_hospital": 12, "seed": 0, "complete": True} == record


def test_files_are_chest_radiographs_that_decode(files, headers):
    for f in files:
        ds = headers[f]
        assert ds.Modality in ("CR", "DX") and ds.ViewPosition in ("PA", "AP") and ds.BodyPartExamined == "CHEST"
        assert ds.SOPClassUID.name.startswith("Digital X-Ray" if ds.Modality == "DX" else "Computed Radiography")
        assert f.stem == ds.SOPInstanceUID
        img = load_image(f)
        assert img.shape == (ds.Rows, ds.Columns) and img.dtype == np.float32
        assert 0 <= img.min() < img.max() <= 1


def test_decoded_images_show_bone_bright_whatever_the_photometric(files, headers):
    """The mediastinum (spine, heart) must decode brighter than the lung fields beside it."""
    for f in files:
        img = load_image(f)
        rows, cols = img.shape
        band = slice(int(0.3 * rows), int(0.5 * rows))
        centre = img[band, int(0.47 * cols) : int(0.53 * cols)].mean()
        lungs = np.r_[img[band, int(0.22 * cols) : int(0.32 * cols)], img[band, int(0.68 * cols) : int(0.78 * cols)]]
        assert centre > lungs.mean() + 0.05, f"{headers[f].PhotometricInterpretation} {f.name}"


def test_same_seed_same_pixels_other_seed_other_pixels(root, tmp_path, monkeypatch):
    """`root` was rendered in this process (a small set); "again" over spawned processes."""
    monkeypatch.setattr(synthetic, "IMAGES_PER_PROCESS", 1)
    generate(tmp_path / "again", HOSPITALS, PER_HOSPITAL, seed=0)
    monkeypatch.undo()
    generate(tmp_path / "other", HOSPITALS, PER_HOSPITAL, seed=1)
    first, again, other = pixels(root), pixels(tmp_path / "again"), pixels(tmp_path / "other")
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not first.keys() & other.keys()
    assert not any(np.array_equal(a, b) for a, b in zip(first.values(), other.values()))


def test_sites_differ_like_a_real_consortium(root, headers):
    by_site: dict[str, list] = {}
    for f, ds in headers.items():
        by_site.setdefault(f.relative_to(root).parts[0], []).append(ds)
    first = {site: dss[0] for site, dss in by_site.items()}
    assert {ds.PhotometricInterpretation for ds in first.values()} == {"MONOCHROME1", "MONOCHROME2"}
    assert {ds.file_meta.TransferSyntaxUID == JPEG2000Lossless for ds in first.values()} == {True, False}
    assert len({ds.BitsStored for ds in first.values()}) == HOSPITALS
    assert len({(ds.Rows, ds.Columns) for ds in first.values()}) == HOSPITALS
    assert any(ds.Rows != ds.Columns for ds in first.values())
    assert {"RescaleSlope" in ds for ds in first.values()} == {True, False}
    assert {"WindowCenter" in ds for ds in first.values()} == {True, False}
    for site, dss in by_site.items():  # one acquisition per site
        assert len({(ds.BitsStored, ds.Rows, ds.Columns, ds.PhotometricInterpretation) for ds in dss}) == 1
    shares = [tuple(sum(1 for f in root.glob(f"{s}/{c}/*.dcm")) for c in CLASSES) for s in sorted(by_site)]
    assert len(set(shares)) == HOSPITALS


def test_no_patient_identifier_in_file_names_or_record(root, headers):
    record = (root / "synthetic.json").read_text()
    paths = " ".join(str(f.relative_to(root)) for f in headers)
    identifiers = set()
    for ds in headers.values():
        identifiers |= {str(ds.PatientID), ds.PatientBirthDate, *str(ds.PatientName).split("^")}
    assert len({ds.PatientID for ds in headers.values()}) == len(headers)
    for ident in identifiers:
        assert ident not in paths and ident not in record, ident


def test_ensure_reuses_a_matching_set_and_regenerates_otherwise(tmp_path):
    ensure_synthetic(tmp_path, 2, 6, seed=3)
    before = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*.dcm")}
    ensure_synthetic(tmp_path, 2, 6, seed=3)
    assert {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*.dcm")} == before
    ensure_synthetic(tmp_path, 2, 7, seed=3)
    assert len(list(tmp_path.rglob("*.dcm"))) == 14
    assert json.loads((tmp_path / "synthetic.json").read_text())["images_per_hospital"] == 7


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("a hospital's own files")
    with pytest.raises(ValueError, match="synthetic.json"):
        generate(tmp_path, 1, 3, seed=0)


def _sides(sign: np.ndarray) -> tuple[float, float]:
    """Added opacity in the image's left and right halves."""
    half = sign.shape[1] // 2
    return float(sign[:, :half].clip(0).sum()), float(sign[:, half:].clip(0).sum())


def test_bacterial_opacity_is_unilateral_and_viral_bilateral():
    """The same patient rendered with each label: the difference is the sign alone."""
    site = hospital_site(1, seed=0)
    bacterial, viral = [], []
    for i in range(8):
        normal = render(np.random.default_rng(i), site, 0, female=False)
        for label, out in ((1, bacterial), (2, viral)):
            left, right = _sides(render(np.random.default_rng(i), site, label, female=False) - normal)
            assert left + right > 0
            out.append(min(left, right) / max(left, right))
    assert max(bacterial) < 0.15, bacterial  # one lung only
    assert min(viral) > 0.3, viral  # both lungs
