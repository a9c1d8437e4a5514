"""Synthetic hospitals: chest radiographs with pneumonia signs, written as real DICOM.

The demo federation, the tests and the benchmarks need labelled DICOM from several
sites without downloading anything. The classes differ only by radiological signs
(bacterial: lobar consolidation; viral: bilateral interstitial/perihilar opacities),
calibrated so a small CNN at 64 px learns them well but not perfectly
(bench/synthetic_difficulty.py). The sites differ the way real ones do (class
balance, exposure, contrast, noise, MONOCHROME1/2, bit depth, size, rescale,
windowing, JPEG 2000), so decoding and federated training meet real heterogeneity.

    python -m src.data.synthetic --out DIR --hospitals 3 --images-per-hospital 300 --seed 0
    python -m src.data.synthetic --montage docs/synthetic_montage.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from scipy import ndimage

from src.progress import progress_bar

logging.getLogger("openjpeg").setLevel(logging.WARNING)  # it logs every encoded tile at INFO

CLASSES = ("normal", "bacterial", "viral")
VERSION = 1  # bump whenever the images change, so stale sets get regenerated
CHUNK = 50   # images per task of the generating processes
IMAGES_PER_PROCESS = 100  # ~4 s of rendering each; a spawned process costs ~1.5 s of CPU to start (300 images:
                          # 10.5-11.4 s in this process, 6.0-6.3 s in two)
SIGN = 0.95  # overall strength of the pneumonia signs, calibrated by the difficulty bench


@dataclass(frozen=True)
class Site:
    """How one hospital acquires and stores its radiographs."""

    modality: str
    view: str
    photometric: str
    bits: int
    rows: int
    cols: int
    rescale: tuple[float, float] | None  # RescaleSlope, RescaleIntercept
    window: bool
    j2k: bool
    balance: tuple[float, float, float]  # shares of normal, bacterial, viral
    gamma: float = 1.0  # contrast curve
    level: float = 0.1  # exposure: where the darkest pixel sits in the stored range
    noise: float = 0.01
    blur: float = 0.7  # detector blur, pixels

    def describe(self) -> str:
        extras = [name for name, on in (("J2K", self.j2k), ("rescale", self.rescale), ("window", self.window)) if on]
        return " ".join([self.modality, self.view, self.photometric, f"{self.bits}-bit {self.rows}x{self.cols}", *extras])


# Hospital i acquires like SITES[(i - 1) % 6]; its exposure, contrast and noise are drawn from the seed.
# DX images always carry a rescale (the DX IOD requires it), CR images only sometimes.
SITES = (
    Site("DX", "PA", "MONOCHROME2", 12, 384, 320, (1.0, 0.0), True, False, (0.45, 0.35, 0.20)),
    Site("CR", "PA", "MONOCHROME1", 10, 320, 320, None, False, True, (0.30, 0.30, 0.40)),
    Site("DX", "AP", "MONOCHROME2", 16, 448, 384, (1.0, -1024.0), True, False, (0.30, 0.45, 0.25)),
    Site("CR", "PA", "MONOCHROME1", 14, 256, 256, (2.0, -1024.0), False, False, (0.40, 0.25, 0.35)),
    Site("DX", "PA", "MONOCHROME2", 12, 288, 352, (0.5, -100.0), True, True, (0.50, 0.25, 0.25)),
    Site("CR", "AP", "MONOCHROME2", 16, 416, 448, None, True, False, (0.35, 0.35, 0.30)),
)


def hospital_site(hospital: int, seed: int) -> Site:
    """The acquisition of `hospital_<hospital>` (1-based)."""
    rng = np.random.default_rng([seed, hospital, 0])
    gamma, level, noise, blur = (float(rng.uniform(*r)) for r in ((0.75, 1.3), (0.02, 0.2), (0.006, 0.025), (0.5, 1.1)))
    return replace(SITES[(hospital - 1) % len(SITES)], gamma=gamma, level=level, noise=noise, blur=blur)


def _ramp(z, edge: float):
    """A soft step 0 -> 1 over `edge` around z = 0 (cheaper than a sigmoid)."""
    return np.clip(z / edge + 0.5, 0.0, 1.0)


def _field(rng, u, v, cells: float):
    """A smooth random field sampled at (u, v), with about `cells` noise cells per unit."""
    lo_u, lo_v = float(u.min()), float(v.min())
    shape = (int((v.max() - lo_v) * cells) + 2, int((u.max() - lo_u) * cells) + 2)
    grid = rng.standard_normal(shape).astype(np.float32)
    return ndimage.map_coordinates(grid, [(v - lo_v) * cells, (u - lo_u) * cells], order=1)


def _ridges(field, width: float):
    """Thin lines along the zero crossings of a random field: a reticular network."""
    return np.exp(-((field / width) ** 2))


class Patient:
    """One patient's anatomy on a site's pixel grid, in units of about half a thorax.

    x runs to the image right (the patient's left in a PA view), y downwards; the
    lungs span roughly x in [-0.8, 0.8] and y from the apices (-0.75) to the domes (+0.45).
    """

    def __init__(self, rng, site: Site, hyperinflated: bool = False):
        self.rng = rng
        rows, cols = site.rows // 2, site.cols // 2  # drawn at half size, for speed
        unit = min(rows, cols) / 2 * rng.uniform(0.9, 1.02)
        a = math.radians(rng.normal(0, 2.5))
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        x0 = (xx - cols / 2 - rng.normal(0, 0.02) * cols) / unit
        y0 = (yy - rows / 2 - rng.normal(0, 0.02) * rows) / unit - 0.05
        self.x = math.cos(a) * x0 + math.sin(a) * y0
        self.y = -math.sin(a) * x0 + math.cos(a) * y0
        self.edge = 1.0 / unit  # one pixel, for soft boundaries
        ap = site.view == "AP"
        self.width = rng.uniform(0.74, 0.86)  # rib cage half-width
        self.apex = rng.uniform(-0.8, -0.7)
        # inspiration: lower domes, longer lungs; viral airway disease traps air (hyperinflation)
        self.base = rng.uniform(0.36, 0.56) - 0.06 * ap + rng.uniform(0.04, 0.12) * hyperinflated
        self.flat = 0.6 if hyperinflated else 1.0  # flattened domes
        self.heart = rng.uniform(0.9, 1.1) * (1.1 if ap else 1.0)  # AP magnifies the heart
        self.fat = rng.uniform(0.0, 0.2)  # soft tissue outside the ribs

    def lung_frame(self, side: int):
        """Lung-local coordinates: u from -1 (medial) to 1 (lateral), v from 0 (apex) to 1 (dome)."""
        cx, w = side * self.width * 0.53, self.width * 0.45
        return (self.x - cx) * side / w, (self.y - self.apex) / (self.base - self.apex)

    def lung(self, side: int):
        """Soft mask of one lung; side -1 = image left (patient's right), +1 = image right."""
        u, v = self.lung_frame(side)
        t = np.clip((v - 0.65) / 0.65, -1, 0)
        half = np.sqrt(1 - t * t)  # rounded apex, widest from the mid zone down
        dome = 1.0 - (0.08 if side < 0 else 0.0)  # the right dome sits higher
        # domes: deep costophrenic angles laterally, shallow cardiophrenic angles medially
        floor = dome + self.flat * (0.16 * np.clip(u, 0, None) ** 2 + 0.05 * u * u)
        e = self.edge / (self.width * 0.45)
        return _ramp(half - np.abs(u), e) * _ramp(floor - v, 2 * e) * (v > 0)

    def hilum(self, side: int):
        return side * 0.2, self.apex + 0.5 * (self.base - self.apex)

    def heart_mask(self):
        """The cardiac silhouette: mostly to the image right, resting on the left dome."""
        c, s = math.cos(0.45), math.sin(0.45)
        dx, dy = self.x - 0.13, self.y - (self.base - 0.16)
        r = np.hypot((c * dx + s * dy) / (0.4 * self.heart), (c * dy - s * dx) / (0.28 * self.heart))
        return _ramp(1 - r, 6 * self.edge)

    def mediastinum(self):
        knob = 0.07 * np.exp(-(((self.y - self.apex - 0.38) / 0.07) ** 2))  # aortic knob, patient's left
        width = np.where(self.x > 0, 0.1 + knob, 0.095)
        return _ramp(width - np.abs(self.x - 0.01), 4 * self.edge)

    def trachea(self):
        return _ramp(0.032 - np.abs(self.x), 2 * self.edge) * _ramp(self.hilum(1)[1] - 0.15 - self.y, 0.05)

    def ribs(self):
        """Posterior ribs arching down laterally, fainter anterior ribs sloping down medially."""
        x, y = self.x, self.y
        s = np.abs(x) - 0.07
        spacing = (self.base - self.apex) / 8.0
        arch = -0.08 * s + 0.45 * s * s + 1.5 * np.clip(s - 0.55, 0, None) ** 2
        wobble = 0.02 * _field(self.rng, x, y, 2.0)  # no two ribs quite alike
        q = (y - arch - self.apex + 0.05 + wobble) / spacing
        d = np.abs(q - np.round(q)) * spacing
        on = (q > -0.5) & (q < 9.5) & (s > 0) & (np.abs(x) < self.width + 0.03)
        posterior = _ramp(0.024 - d, self.edge) * (0.6 + 0.4 * (d / 0.024) ** 2) * on
        lateral = self.width - 0.02
        qa = (y - 0.55 * (lateral - np.abs(x)) - self.apex - 0.02) / spacing
        da = np.abs(qa - np.round(qa)) * spacing
        on = (qa > -0.5) & (qa < 5.5) & (s > 0.3) & (np.abs(x) < lateral)
        return posterior + 0.5 * _ramp(0.02 - da, 2 * self.edge) * on

    def clavicles(self):
        s = np.abs(self.x) - 0.06
        centre = self.apex + 0.1 - 0.3 * s + 0.4 * s * s
        return _ramp(0.035 - np.abs(self.y - centre), self.edge) * _ramp(0.55 - np.abs(s - 0.3), 0.1)

    def spine(self):
        bodies = 0.85 + 0.15 * np.cos(np.pi * self.y / 0.075) ** 2
        return _ramp(0.07 - np.abs(self.x - 0.005), 2 * self.edge) * bodies

    def body(self):
        """Neck, sloping shoulders, chest wall; humeral heads at the top corners."""
        chest = self.width + 0.08 + self.fat
        neck = 0.26 + 1.1 * np.sqrt(np.clip(self.y - self.apex + 0.42, 0, None))
        half = np.minimum(neck, chest + 0.12 * _ramp(self.apex + 0.2 - self.y, 0.3))
        shoulder = np.hypot(np.abs(self.x) - chest - 0.06, self.y - self.apex + 0.05)
        return _ramp(half - np.abs(self.x), 0.08), _ramp(0.12 - shoulder, 0.03)

    def vessels(self):
        """Hila and vessel markings fanning out of them, fading to the periphery."""
        out = 0
        for side in (-1, 1):
            hx, hy = self.hilum(side)
            r = np.hypot(self.x - hx, self.y - hy)
            theta = np.arctan2(self.y - hy, (self.x - hx) * side)
            bend = theta + self.rng.normal(0, 0.6) * r  # vessels curve a little
            streaks = _ridges(_field(self.rng, bend * 1.5, r, 4.0), 0.35) * _ramp(r - 0.08, 0.08)
            out = out + streaks * np.exp(-r / 0.3) + 0.8 * np.exp(-((r / 0.09) ** 2))
        return out


def consolidation(p: Patient, depth: float):
    """Bacterial pneumonia: a dense, fairly homogeneous opacity filling part of one lobe.

    An upper-lobe opacity stops sharply at the horizontal fissure; a middle-lobe (or
    lingula) one lies against the heart border; a lower-lobe one fades upwards.
    Sometimes air bronchograms (dark branching bronchi) run through it.
    """
    rng = p.rng
    side = int(rng.choice([-1, 1]))
    u, v = p.lung_frame(side)
    fissure = 0.45 + 0.06 * u
    lobe = rng.choice(3, p=[0.3, 0.25, 0.45])
    if lobe == 0:
        region, cu, cv = _ramp(fissure - v, 0.03), rng.uniform(-0.4, 0.6), rng.uniform(0.15, 0.35)
    elif lobe == 1:
        region, cu, cv = _ramp(v - fissure, 0.03) * _ramp(0.1 - u, 0.5), rng.uniform(-0.8, -0.2), rng.uniform(0.55, 0.8)
    else:
        region, cu, cv = _ramp(v - 0.5, 0.25), rng.uniform(-0.3, 0.7), rng.uniform(0.7, 0.95)
    extent = rng.uniform(0.3, 0.7)
    blob = _ramp(extent - np.hypot(u - cu, (v - cv) * 1.5) + 0.25 * _field(rng, u, v, 3.0), 0.25)
    opacity = region * blob * p.lung(side) * (1 - p.heart_mask()) * (1 - p.mediastinum())
    if rng.random() < 0.5:
        hx, hy = p.hilum(side)
        theta = np.arctan2(p.y - hy, (p.x - hx) * side)
        bronchi = _ridges(_field(rng, theta * 1.5, np.hypot(p.x - hx, p.y - hy), 3.0), 0.2)
        opacity = opacity * (1 - 0.4 * bronchi)
    return min(1.0, SIGN * rng.uniform(0.45, 0.9)) * depth * opacity


def interstitial(p: Patient, depth: float, air):
    """Viral pneumonia: bilateral patchy opacities and peribronchial streaks around the
    hila, fine reticular lines, sometimes spreading to the periphery."""
    rng = p.rng
    perihilar, streaks = 0, 0
    for side in (-1, 1):
        hx, hy = p.hilum(side)
        r = np.hypot((p.x - hx) / 1.2, p.y - hy)
        theta = np.arctan2(p.y - hy, (p.x - hx) * side)
        perihilar = perihilar + np.exp(-((r / rng.uniform(0.3, 0.45)) ** 2))
        streaks = streaks + _ridges(_field(rng, theta * 1.2, r, 3.0), 0.6) * np.exp(-r / 0.35)
    where = np.clip(perihilar + rng.uniform(0.0, 0.4), 0, 1)
    patches = _ramp(_field(rng, p.x, p.y, 7.0) - rng.uniform(0.2, 0.8), 0.8)
    reticular = _ridges(_field(rng, p.x, p.y, 18.0), 0.35)
    pattern = 0.6 * patches + 0.25 * streaks + 0.15 * reticular
    return min(1.0, SIGN * rng.uniform(0.35, 0.7)) * depth * air * where * pattern


def render(rng, site: Site, label: int, female: bool):
    """A radiograph as density, bone bright, in [0, 1] (0 = direct exposure)."""
    trapped = rng.random() < 0.7  # drawn for every class, so one seed gives one patient whatever the label
    p = Patient(rng, site, hyperinflated=label == 2 and trapped)
    lungs = p.lung(-1) + p.lung(1)
    heart, mediastinum = p.heart_mask(), p.mediastinum()
    air = lungs * (1 - heart) * (1 - mediastinum)
    body, humeri = p.body()
    depth = rng.uniform(0.24, 0.46) * (1 - p.fat)  # thick soft tissue greys the lungs
    density = body * (0.5 + 0.08 * _ramp(p.y - p.base - 0.1, 0.3) + 0.06 * _ramp(0.5 - np.abs(p.x), 0.8))
    density = density - depth * air * (1 - 0.3 * _ramp(np.abs(p.x) - 0.6, 0.4))
    density -= 0.07 * p.trachea()
    behind = np.maximum(np.maximum(heart, mediastinum), _ramp(p.y - p.base - 0.1, 0.2))  # dense structures hide bone
    bones = 0.03 * p.spine() + 0.055 * p.ribs()
    density += body * (bones * (1 - 0.7 * behind) + 0.1 * p.clavicles() + 0.15 * humeri)
    density += rng.uniform(0.04, 0.1) * air * p.vessels()
    if female and rng.random() < 0.7:  # breast shadows over both lower zones
        shadow = sum(_ramp(0.3 - np.hypot((p.x - s * 0.45) / 1.3, p.y - p.base + 0.05), 0.2) for s in (-1, 1))
        density += rng.uniform(0.03, 0.07) * shadow
    if label == 1:
        density += consolidation(p, depth)
    elif label == 2:
        density += interstitial(p, depth, air)
    zoom = (site.rows / density.shape[0], site.cols / density.shape[1])
    density = ndimage.zoom(density, zoom, order=1, grid_mode=True, mode="nearest")
    return np.clip(ndimage.gaussian_filter(density, site.blur) / 0.8, 0, 1)


def store(img, site: Site, rng):
    """Stored pixel values as the site writes them: its contrast, exposure, noise, bit depth.

    Contrast also varies per image (patient thickness, exposure), as on real archives.
    """
    v = img ** (site.gamma * rng.uniform(0.75, 1.33))
    v = v + site.noise * (0.5 + v) * rng.standard_normal(v.shape, dtype=np.float32)  # quantum noise
    top = 2**site.bits - 1
    stored = np.round(np.clip(site.level + (0.97 - site.level) * v, 0, 1) * top).astype(np.uint16)
    return top - stored if site.photometric == "MONOCHROME1" else stored


FIRST = "ALEX SAM MARIA JONAS LEA NOAH EMMA LUCA MIA ELIAS SARA FINN".split()
LAST = "MUELLER SMITH GARCIA ROSSI KOWALSKI DUBOIS JANSEN NOVAK SILVA BERG".split()


def dicom(stored, site: Site, uids: dict, rng, female: bool) -> Dataset:
    """The DICOM object for one image, with a made-up patient."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation if site.modality == "DX" else ComputedRadiographyImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["image"], uids["study"], uids["series"]
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = site.modality, site.view, "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if site.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientName = f"{rng.choice(LAST)}^{rng.choice(FIRST)}"
    ds.PatientID = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), 2)) + str(rng.integers(10**6, 10**7))
    ds.PatientBirthDate = f"{rng.integers(1935, 2006)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    ds.PatientSex = "F" if female else "M"
    ds.StudyDate = f"{rng.integers(2019, 2026)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImagerPixelSpacing = [round(430 / max(site.rows, site.cols), 3)] * 2
    ds.set_pixel_data(stored, site.photometric, site.bits, generate_instance_uid=False)
    if site.rescale:
        ds.RescaleSlope, ds.RescaleIntercept = site.rescale
        ds.RescaleType = "US"
    if site.window:
        slope, intercept = site.rescale or (1.0, 0.0)
        lo, hi = np.percentile(stored, [0.5, 99.5]) * slope + intercept
        ds.WindowCenter, ds.WindowWidth = round((lo + hi) / 2, 1), round((hi - lo) * 1.2, 1)
    if site.j2k:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return ds


def labels(site: Site, n: int, rng) -> list[int]:
    """Exactly the site's class shares of `n` images (largest remainder), in random order."""
    exact = np.array(site.balance) * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: n - counts.sum()]] += 1
    return list(rng.permutation(np.repeat(np.arange(len(CLASSES)), counts)))


def _write_images(out: Path, hospital: int, n: int, seed: int, first: int, stop: int) -> int:
    """Images `first`..`stop - 1` of a hospital of `n`; each from its own random stream, so its pixels
    depend only on (seed, hospital, index) and any split of the work gives the same files."""
    site = hospital_site(hospital, seed)
    name = f"hospital_{hospital}"
    every_label = labels(site, n, np.random.default_rng([seed, hospital, 1]))
    for i in range(first, stop):
        label, rng = every_label[i], np.random.default_rng([seed, hospital, 2, i])
        female = bool(rng.random() < 0.5)
        stored = store(render(rng, site, int(label), female), site, rng)
        uids = {k: generate_uid(entropy_srcs=[str(seed), name, str(i), k]) for k in ("image", "study", "series")}
        path = out / name / CLASSES[label] / f"{uids['image']}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        dicom(stored, site, uids, rng, female).save_as(path, enforce_file_format=True)
    return stop - first


def _params(hospitals: int, images_per_hospital: int, seed: int) -> dict:
    return {"version": VERSION, "hospitals": hospitals, "images_per_hospital": images_per_hospital, "seed": seed}


def generate(out: Path, hospitals: int, images_per_hospital: int, seed: int) -> None:
    """Write `out/hospital_<i>/<class>/<uid>.dcm` and `out/synthetic.json`, replacing an earlier set."""
    out, params = Path(out), _params(hospitals, images_per_hospital, seed)
    record = out / "synthetic.json"
    if out.exists() and any(out.iterdir()) and not record.exists():
        raise ValueError(f"{out}: not empty and holds no synthetic.json; generate into an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(params | {"complete": False}) + "\n")  # ours, even if interrupted
    for old in out.glob("hospital_*"):
        shutil.rmtree(old)
    # chunks of images over processes, up to the cores and IMAGES_PER_PROCESS each (spawned, not forked:
    # the caller may hold threads, e.g. torch's); a chunk's images do not depend on the chunking
    chunks = [(h, first, min(first + CHUNK, images_per_hospital)) for h in range(1, hospitals + 1)
              for first in range(0, images_per_hospital, CHUNK)]
    processes = min(os.cpu_count() or 1, hospitals * images_per_hospital // IMAGES_PER_PROCESS)
    with progress_bar("generating synthetic hospitals", hospitals * images_per_hospital) as advance:
        if processes <= 1:  # a small set: rendering it here costs less than starting processes
            for h, first, stop in chunks:
                advance(_write_images(out, h, images_per_hospital, seed, first, stop))
        else:
            with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
                for done in as_completed([pool.submit(_write_images, out, h, images_per_hospital, seed, first, stop)
                                          for h, first, stop in chunks]):
                    advance(done.result())
    sites = {f"hospital_{h}": hospital_site(h, seed).describe() for h in range(1, hospitals + 1)}
    params |= {"classes": list(CLASSES), "sites": sites, "complete": True}
    record.write_text(json.dumps(params, indent=2) + "\n")


def ensure_synthetic(root: Path, hospitals: int, images_per_hospital: int, seed: int) -> None:
    """Reuse the set at `root` when it was made with these arguments, else (re)generate it."""
    record = Path(root) / "synthetic.json"
    if record.exists():
        made = json.loads(record.read_text())
        wanted = _params(hospitals, images_per_hospital, seed)
        if made.get("complete") and {k: made.get(k) for k in wanted} == wanted:
            return
    generate(Path(root), hospitals, images_per_hospital, seed)


def montage(path: Path, seed: int = 0) -> None:
    """A PNG of decoded samples: one row per site, two images per class, bone bright."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.images import load_image

    fig, axes = plt.subplots(len(SITES), 2 * len(CLASSES), figsize=(13, 2.3 * len(SITES)))
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), len(SITES), 20, seed)
        for row, hospital in enumerate(range(1, len(SITES) + 1)):
            for c, cls in enumerate(CLASSES):
                files = sorted((Path(tmp) / f"hospital_{hospital}" / cls).glob("*.dcm"))[:2]
                for k, f in enumerate(files):
                    img, ax = load_image(f), axes[row, 2 * c + k]
                    ax.imshow(img, cmap="gray", vmin=np.percentile(img, 0.5), vmax=np.percentile(img, 99.5))
                    ax.set_title(cls, fontsize=8)
                    ax.axis("off")
            label = f"hospital_{hospital}\n" + hospital_site(hospital, seed).describe().replace(" ", "\n", 3)
            axes[row, 0].text(-0.1, 0.5, label, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("fedcxr synthetic hospitals: rows = sites, columns = classes", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write synthetic hospitals of chest radiographs as DICOM.")
    parser.add_argument("--out", type=Path, help="folder for hospital_<i>/<class>/<uid>.dcm")
    parser.add_argument("--hospitals", type=int, default=3)
    parser.add_argument("--images-per-hospital", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--montage", type=Path, help="write a PNG of samples per site and class instead")
    args = parser.parse_args()
    if args.montage:
        montage(args.montage, args.seed)
    elif args.out:
        generate(args.out, args.hospitals, args.images_per_hospital, args.seed)
    else:
        parser.error("give --out DIR or --montage PATH")


if __name__ == "__main__":
    main()
