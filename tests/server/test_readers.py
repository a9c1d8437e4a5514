"""Expert reads matched to the pooled test set and scored beside the model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from src.data.layouts import Sample
from src.server.readers import load_reads, score_reads

CLASSES = ["normal", "bacterial", "viral"]


@pytest.fixture
def test_set(tmp_path):
    samples = [Sample(str(tmp_path / "site" / f"img{i}.png"), i % 3, "site", "test") for i in range(12)]
    return tmp_path, samples


def write_csv(path, rows, header="image,label"):
    path.write_text("\n".join([header] + [f"{image},{label}" for image, label in rows]) + "\n")
    return path


def test_reads_are_matched_by_relative_or_absolute_path_and_others_counted(test_set):
    root, samples = test_set
    rows = [(f"site/img{i}.png", CLASSES[(i + (i == 4)) % 3]) for i in range(0, 12, 2)]  # one wrong call (img4)
    rows.append((samples[1].path, CLASSES[1]))  # absolute path
    rows.append(("site/train_only.png", "viral"))  # not a test image
    reads = load_reads(write_csv(root / "reads.csv", rows), samples, CLASSES, root)
    assert sorted(reads.index.tolist()) == [0, 1, 2, 4, 6, 8, 10]
    assert reads.skipped == 1

    labels = np.array([s.label for s in samples])
    probs = np.eye(3)[labels] * 0.8 + 0.2 / 3  # a model that is always right
    scored = score_reads(reads, labels, probs, CLASSES)
    assert scored["images"] == 7 and scored["skipped"] == 1
    truth = labels[reads.index]
    assert scored["reader"]["accuracy"] == pytest.approx(accuracy_score(truth, reads.labels)) == pytest.approx(6 / 7)
    assert scored["model"]["accuracy"] == 1.0
    assert scored["reader"]["num_examples"] == scored["model"]["num_examples"] == 7


@pytest.mark.parametrize("content, message", [
    ("picture,label\nsite/img0.png,normal\n", "no column image"),
    ("image,label\nsite/img0.png,covid\n", "line 2: label 'covid'"),
    ("image,label\nelsewhere/x.png,normal\n", "none of the 1 images"),
])
def test_a_malformed_csv_is_one_clear_error(test_set, content, message):
    root, samples = test_set
    (root / "reads.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_reads(root / "reads.csv", samples, CLASSES, root)


def test_a_missing_csv_is_named(test_set):
    root, samples = test_set
    with pytest.raises(ValueError, match="eval.reader_csv: .*does not exist"):
        load_reads(root / "nope.csv", samples, CLASSES, root)
