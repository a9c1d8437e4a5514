"""Expert reads scored beside the model on the same test images (`eval.reader_csv`).

PriMIA compared its federated model with radiologists reading the same images; a
consortium does the same here. The CSV has a header with at least `image` (the image's
path, relative to `data.root` or absolute) and `label` (a class name); one row per
read image. Reads of images outside the pooled test set are skipped and counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.layouts import Sample
from src.metrics import classification_metrics


@dataclass
class Reads:
    """Which pooled test images were read (`index` into the test set) and the reader's class for each."""

    index: np.ndarray
    labels: np.ndarray
    skipped: int


def load_reads(csv_path: str | Path, test_samples: list[Sample], classes: list[str], root: str | Path) -> Reads:
    """Match a reader CSV to the pooled test set; a malformed CSV is one clear error."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"eval.reader_csv: {csv_path} does not exist")
    position = {str(Path(s.path).resolve()): i for i, s in enumerate(test_samples)}
    index, labels, skipped = [], [], 0
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"eval.reader_csv: {csv_path} has no column {', '.join(sorted(missing))} "
                             f"(expected a header with image,label)")
        for row_number, row in enumerate(reader, start=2):
            if row["label"] not in classes:
                raise ValueError(f"eval.reader_csv: {csv_path} line {row_number}: label {row['label']!r} "
                                 f"is not one of {classes}")
            image = Path(row["image"])
            found = position.get(str((image if image.is_absolute() else Path(root) / image).resolve()))
            if found is None:
                skipped += 1
                continue
            index.append(found)
            labels.append(classes.index(row["label"]))
    if not index:
        raise ValueError(f"eval.reader_csv: none of the {skipped} images of {csv_path} is in the test set")
    return Reads(np.asarray(index), np.asarray(labels), skipped)


def score_reads(reads: Reads, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """The reader's and the model's metrics on the images the reader read.

    A read is a hard call, so the reader's AUC is that of a one-hot score (one point on
    the ROC curve); accuracy, sensitivity and specificity compare like with like.
    """
    truth = labels[reads.index]
    return {
        "images": int(len(reads.index)),
        "skipped": reads.skipped,
        "reader": classification_metrics(truth, np.eye(len(classes))[reads.labels], classes),
        "model": classification_metrics(truth, probs[reads.index], classes),
    }
