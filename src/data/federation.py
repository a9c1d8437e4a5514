"""From a configured archive to a federation: which hospital trains on which images.

`build_federation` runs the whole selection once (scan the layout, screen DICOM
headers, share out to hospitals, split) and returns a `Federation` that can be
written to `split.json` and read back, so a run can be reproduced exactly and each
hospital's client can be handed just its own part.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hydra.utils import to_absolute_path

from src.data.dicom import read_dicom_header, screen_radiograph
from src.data.images import is_dicom
from src.data.layouts import Sample, Scan, scan_layout
from src.data.partition import assign_hospitals, split_hospital
from src.data.skips import SkipLog, UnusableImage

log = logging.getLogger("fedcxr.data")


@dataclass
class Federation:
    """Every usable image with its hospital and split, the class names, and what was skipped."""

    classes: list[str]
    hospitals: list[str]
    samples: list[Sample]
    skips: SkipLog = field(default_factory=SkipLog)

    def select(self, hospital: str | None = None, split: str | None = None) -> list[Sample]:
        return [
            s for s in self.samples
            if (hospital is None or s.hospital == hospital) and (split is None or s.split == split)
        ]

    def counts(self) -> dict[str, dict[str, list[int]]]:
        """hospital -> split -> images per class (index = label)."""
        tally = Counter((s.hospital, s.split, s.label) for s in self.samples)
        return {
            h: {sp: [tally[h, sp, k] for k in range(len(self.classes))] for sp in ("train", "val", "test")}
            for h in self.hospitals
        }

    def only(self, hospital: str) -> "Federation":
        """The part one hospital's client receives: its own images and nothing else."""
        return Federation(self.classes, [hospital], self.select(hospital))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(
            {"classes": self.classes, "hospitals": self.hospitals,
             "samples": [asdict(s) for s in self.samples]}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Federation":
        try:
            raw = json.loads(Path(path).read_text())
            return cls(raw["classes"], raw["hospitals"], [Sample(**s) for s in raw["samples"]])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a fedcxr split file ({e})") from e


def _screen(scan: Scan, frontal_only: bool) -> list[Sample]:
    """Drop DICOMs that are not frontal chest radiographs, reading headers only."""
    kept = []
    for s in scan.samples:
        if is_dicom(s.path):
            try:
                screen_radiograph(read_dicom_header(s.path), frontal_only)
            except UnusableImage as e:
                scan.skips.skip_error(s.path, e, s.hospital or "-")
                continue
        kept.append(s)
    return kept


def build_federation(data_cfg, num_hospitals: int, seed: int) -> Federation:
    """Scan, screen, share out and split the configured archive (deterministic for `seed`)."""
    if data_cfg.get("split_file"):
        return Federation.load(to_absolute_path(str(data_cfg.split_file)))
    data_cfg = data_cfg.copy()
    data_cfg.root = to_absolute_path(str(data_cfg.root))
    scan = scan_layout(data_cfg)
    samples = _screen(scan, bool(data_cfg.frontal_only))
    named = [s.hospital is not None for s in samples]
    if scan.hospitals:
        if not all(named):
            raise ValueError(f"data.root: {data_cfg.root} names hospitals for some images but not all")
        hospitals = scan.hospitals
        if num_hospitals != len(hospitals):
            log.info("the archive names %d hospitals; federation.num_hospitals=%d does not apply",
                     len(hospitals), num_hospitals)
    else:
        hospitals = [f"hospital_{i + 1}" for i in range(num_hospitals)]
        samples = assign_hospitals(samples, hospitals, data_cfg.partition, float(data_cfg.alpha), seed)
    split = []
    for i, hospital in enumerate(hospitals):
        mine = [s for s in samples if s.hospital == hospital]
        split += split_hospital(mine, float(data_cfg.val_fraction), float(data_cfg.test_fraction), seed + i)
    return Federation(scan.classes, hospitals, split, scan.skips)
