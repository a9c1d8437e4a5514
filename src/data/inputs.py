"""The images a user names on the command line: files, folders (searched recursively) or a CSV.

A CSV names its images in a column `image` (else its first column), relative to the
CSV's own folder unless absolute. Used by the plaintext (`src.predict`) and the
encrypted (`src.inference.diagnose`) diagnosis alike, so that both see the same list.
"""

from __future__ import annotations

import csv
from pathlib import Path

from src.data.images import IMAGE_SUFFIXES, is_dicom


def image_paths(names: list[str]) -> list[Path]:
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p)))
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            column = rows[0].index("image") if "image" in rows[0] else 0
            header = "image" in rows[0] or not Path(path.parent / rows[0][column]).exists()
            paths += [p if p.is_absolute() else path.parent / p
                      for p in (Path(row[column]) for row in rows[1 if header else 0:] if row)]
        else:
            paths.append(path)
    return paths
