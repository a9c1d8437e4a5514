"""Metrics against scikit-learn on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef, roc_auc_score

from src.metrics import classification_metrics

CLASSES = ["normal", "bacterial", "viral"]


def random_predictions(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_metrics_agree_with_scikit_learn():
    y, probs = random_predictions()
    m = classification_metrics(y, probs, CLASSES)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for i, c in enumerate(CLASSES):
        assert m["auc_per_class"][c] == pytest.approx(roc_auc_score(y == i, probs[:, i]))
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    for i, c in enumerate(CLASSES):
        assert m["sensitivity"][c] == pytest.approx(((pred == i) & (y == i)).sum() / (y == i).sum())
        assert m["specificity"][c] == pytest.approx(((pred != i) & (y != i)).sum() / (y != i).sum())
    assert np.array_equal(np.array(m["confusion_matrix"]).sum(1), np.bincount(y, minlength=3))


def test_known_small_case():
    y = [0, 0, 1, 1, 2, 2]
    probs = np.array([[.8, .1, .1], [.4, .5, .1], [.1, .8, .1], [.2, .7, .1], [.1, .1, .8], [.6, .1, .3]])
    m = classification_metrics(y, probs, CLASSES)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == {"normal": 0.5, "bacterial": 1.0, "viral": 0.5}
    assert m["specificity"]["bacterial"] == pytest.approx(3 / 4)
    # normal: positives 0.8, 0.4 against negatives 0.1, 0.2, 0.1, 0.6 — 7 of 8 pairs ranked right
    assert m["auc_per_class"]["normal"] == pytest.approx(7 / 8)


def test_tied_scores_count_half():
    m = classification_metrics([0, 1, 0, 1], np.array([[.5, .5], [.5, .5], [.9, .1], [.1, .9]]), ["a", "b"])
    assert m["auc_per_class"]["b"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_a_class_absent_from_the_labels_gives_undefined_auc_not_a_number():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[.9, .05, .05], [.6, .3, .1], [.2, .7, .1], [.3, .6, .1]])
    m = classification_metrics(y, probs, CLASSES)
    assert m["auc_per_class"]["viral"] is None
    assert m["auc"] is None
    assert m["auc_per_class"]["normal"] == pytest.approx(1.0)
    assert m["sensitivity"]["viral"] is None
