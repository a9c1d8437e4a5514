"""The archive layouts fedcxr reads: each turns a root path into labelled samples.

A layout only finds files and labels them; decoding, view selection and splitting
happen later (`src.data.federation`). Files a layout cannot label (an unknown class
folder, a file type that is no image, an image without a label row) are skipped and
counted here, so the check report can say why they were left out.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from src.data.images import IMAGE_SUFFIXES, is_dicom
from src.data.skips import SkipLog

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its class index, and (when known) its hospital and split."""

    path: str
    label: int
    hospital: str | None = None
    split: str | None = None


@dataclass
class Scan:
    """What a layout found: class names (index = label), samples, skipped files.

    `hospitals` lists the hospitals the archive itself names (empty when it names
    none), including any whose every file was skipped.
    """

    classes: list[str]
    samples: list[Sample]
    skips: SkipLog = field(default_factory=SkipLog)
    hospitals: list[str] = field(default_factory=list)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder: Path, skips: SkipLog, hospital: str) -> list[Path]:
    """Image files under `folder` (recursively); other files are skipped and counted."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path):
            found.append(path)
        else:
            skips.skip(path, "not an image file", f"suffix {path.suffix or '(none)'!r}", hospital)
    return found


def _class_folders(
    folder: Path, names: dict[str, int], scan: Scan, hospital: str | None, split: str | None
) -> None:
    """Read `<folder>/<class>/<files>`; folders that are not a known class are skipped."""
    for sub in _visible(folder):
        if not sub.is_dir():
            scan.skips.skip(sub, "outside a class folder", hospital=hospital or "-")
        elif sub.name in names:
            scan.samples += [
                Sample(str(f), names[sub.name], hospital, split)
                for f in _image_files(sub, scan.skips, hospital or "-")
            ]
        else:
            n = sum(1 for f in sub.rglob("*") if f.is_file())
            scan.skips.skip(sub, "unknown class", f"folder {sub.name!r}, {n} files", hospital or "-", n)


def _split_folders(hospital: Path) -> list[tuple[Path, str | None]]:
    """A hospital's `train|val|test` folders with their split, or the hospital itself without one."""
    splits = [d for d in _visible(hospital) if d.is_dir() and d.name in SPLITS]
    return [(d, d.name) for d in splits] if splits else [(hospital, None)]


def discover_classes(root: Path, hospitals: list[Path]) -> list[str]:
    """The class folder names, sorted, as torchvision's `ImageFolder` finds them; every hospital must
    have the same set (a class missing at one hospital would silently shift what its labels mean)."""
    found = {h.name: sorted({d.name for folder, _ in _split_folders(h) for d in _visible(folder) if d.is_dir()})
             for h in hospitals}
    if not found:
        raise ValueError(f"data.root: {root} has no hospital folders")
    first, classes = next(iter(found.items()))
    for hospital, names in found.items():
        extra, missing = sorted(set(names) - set(classes)), sorted(set(classes) - set(names))
        if extra or missing:
            raise ValueError(
                f"data.classes is unset, so the class folders are the classes and every hospital needs the same: "
                f"hospital {hospital!r}" + (f" has {extra} that {first!r} has not" if extra else "")
                + (" and" if extra and missing else "") + (f" lacks {missing}" if missing else "")
                + f" (classes of {first!r}: {classes}); rename the folder or set data.classes=[...]")
    if not classes:
        raise ValueError(f"data.root: no class folders under the hospitals of {root}")
    return classes


def folder(root: Path, cfg) -> Scan:
    """`<root>/<hospital>/[train|val|test/]<class>/<files>`: each top-level folder is a hospital.
    Without `data.classes` the class folders are the classes (sorted); with it, only those, in its order."""
    hospitals = [h for h in _visible(root) if h.is_dir()]
    classes = list(cfg.classes) if cfg.get("classes") else discover_classes(root, hospitals)
    names = {c: i for i, c in enumerate(classes)}
    scan = Scan(classes, [])
    for hospital in hospitals:
        scan.hospitals.append(hospital.name)
        for where, split in _split_folders(hospital):
            _class_folders(where, names, scan, hospital.name, split)
    return scan


def synthetic(root: Path, cfg) -> Scan:
    """Generated hospitals in the `folder` layout; made on first use, reused after."""
    from src.data.synthetic import ensure_synthetic

    ensure_synthetic(root, cfg.hospitals, cfg.images_per_hospital, cfg.seed)
    return folder(root, cfg)


def kermany(root: Path, cfg) -> Scan:
    """Kermany et al.: `<root>/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg`.

    With 3 classes the pneumonia cases are split into bacterial and viral by their
    file names (`person12_bacteria_45.jpeg`, `person3_virus_7.jpeg`), as PriMIA did.
    """
    three = int(cfg.num_classes) == 3
    if int(cfg.num_classes) not in (2, 3):
        raise ValueError(f"data.num_classes: expected 2 or 3 for kermany, got {cfg.num_classes}")
    classes = ["normal", "bacterial", "viral"] if three else ["normal", "pneumonia"]
    scan = Scan(classes, [])
    for split in [d for d in _visible(root) if d.is_dir()]:
        if split.name not in SPLITS:
            scan.skips.skip(split, "unknown split", f"expected one of {SPLITS}")
            continue
        for cls in _visible(split):
            if cls.name not in ("NORMAL", "PNEUMONIA"):
                scan.skips.skip(cls, "unknown class", f"folder {cls.name!r}")
                continue
            for f in _image_files(cls, scan.skips, "-"):
                if cls.name == "NORMAL":
                    label = 0
                elif not three:
                    label = 1
                elif "bacteria" in f.name.lower():
                    label = 1
                elif "virus" in f.name.lower():
                    label = 2
                else:
                    scan.skips.skip(f, "unknown class", "file name names neither bacteria nor virus")
                    continue
                scan.samples.append(Sample(str(f), label, None, split.name))
    return scan


COVID_FOLDERS = {"Normal": "normal", "COVID": "covid", "Lung_Opacity": "lung_opacity",
                 "Viral Pneumonia": "viral_pneumonia"}


def covid_radiography(root: Path, cfg) -> Scan:
    """COVID-19 Radiography Database: `<root>/<class>/images/*.png` (masks/ ignored)."""
    classes = list(COVID_FOLDERS.values())
    scan = Scan(classes, [])
    for cls in [d for d in _visible(root) if d.is_dir()]:
        if cls.name not in COVID_FOLDERS:
            scan.skips.skip(cls, "unknown class", f"folder {cls.name!r}")
            continue
        images = cls / "images" if (cls / "images").is_dir() else cls
        label = classes.index(COVID_FOLDERS[cls.name])
        scan.samples += [Sample(str(f), label) for f in _image_files(images, scan.skips, "-")]
    return scan


def rsna(root: Path, cfg) -> Scan:
    """RSNA Pneumonia Detection: DICOMs named by patientId, labels in a CSV.

    The CSV has one row per box (several per patient); a patient is pneumonia when
    any row has Target 1.
    """
    labels: dict[str, int] = {}
    with open(root / "stage_2_train_labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            pid = row["patientId"]
            labels[pid] = max(labels.get(pid, 0), int(row["Target"]))
    scan = Scan(["normal", "pneumonia"], [])
    images = root / "stage_2_train_images"
    seen = set()
    for f in _image_files(images, scan.skips, "-"):
        if f.stem not in labels:
            scan.skips.skip(f, "no label", "patientId not in stage_2_train_labels.csv")
            continue
        seen.add(f.stem)
        scan.samples.append(Sample(str(f), labels[f.stem]))
    missing = len(labels) - len(seen)
    if missing:
        scan.skips.skip(images, "missing file", f"{missing} labelled patients have no image", count=missing)
    return scan


def manifest_csv(root: Path, cfg) -> Scan:
    """A manifest CSV: `path,label[,hospital][,split]`; relative paths from the CSV's folder."""
    with open(root, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{root}: expected columns path,label[,hospital][,split], got {list(rows[0])}")
    classes = list(cfg.classes) if cfg.get("classes") else sorted({r["label"] for r in rows})
    names = {c: i for i, c in enumerate(classes)}
    scan = Scan(classes, [])
    for r in rows:
        path = Path(r["path"]) if Path(r["path"]).is_absolute() else root.parent / r["path"]
        hospital = r.get("hospital") or None
        label = r["label"]
        if label not in names and label.isdigit() and int(label) < len(classes):
            label = classes[int(label)]
        if label not in names:
            scan.skips.skip(path, "unknown class", f"label {label!r}", hospital or "-")
        elif not path.is_file():
            scan.skips.skip(path, "missing file", hospital=hospital or "-")
        elif (r.get("split") or None) not in (None, *SPLITS):
            scan.skips.skip(path, "unknown split", f"split {r['split']!r}", hospital or "-")
        else:
            scan.samples.append(Sample(str(path), names[label], hospital, r.get("split") or None))
    scan.hospitals = sorted({r["hospital"] for r in rows if r.get("hospital")})
    return scan


def medmnist(root: Path, cfg) -> Scan:
    """A MedMNIST v2 `.npz` (e.g. pneumoniamnist): images addressed as `<file>::<split>:<i>`."""
    classes = list(cfg.classes)
    scan = Scan(classes, [])
    with np.load(root) as npz:
        for split in SPLITS:
            if f"{split}_labels" not in npz:
                continue
            labels = npz[f"{split}_labels"].reshape(len(npz[f"{split}_labels"]), -1)[:, 0]
            if labels.max(initial=0) >= len(classes):
                raise ValueError(f"{root}: label {labels.max()} but data.classes has {len(classes)} names")
            scan.samples += [Sample(f"{root}::{split}:{i}", int(y), None, split) for i, y in enumerate(labels)]
    return scan


LAYOUTS: dict[str, Callable[[Path, object], Scan]] = {
    "synthetic": synthetic,
    "folder": folder,
    "kermany": kermany,
    "covid_radiography": covid_radiography,
    "rsna": rsna,
    "csv": manifest_csv,
    "medmnist": medmnist,
}


def scan_layout(cfg) -> Scan:
    """Find and label every image of the configured layout under `cfg.root`."""
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"data.layout: unknown layout {cfg.layout!r}; expected one of {sorted(LAYOUTS)}")
    root = Path(str(cfg.root)).expanduser()
    if cfg.layout != "synthetic" and not root.exists():
        raise FileNotFoundError(f"data.root: {root} does not exist (layout {cfg.layout})")
    return LAYOUTS[cfg.layout](root, cfg)
