"""Classification metrics for one evaluation: what a radiology paper would report.

Every metric comes from scikit-learn, the field's reference implementation (MONAI's
`compute_roc_auc` gives the same AUC, but importing MONAI costs every evaluating process
~2 s of CPU). A metric that is undefined on the given labels
(e.g. the AUC of a class absent from a small hospital's test set) is None, never a
made-up number.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, matthews_corrcoef, roc_auc_score


def _auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, probs))


def classification_metrics(y_true, probs, classes: list[str]) -> dict:
    """Metrics of predicted class probabilities `probs` (n × K) against labels `y_true` (n)."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    y_pred = probs.argmax(axis=1)
    onehot = np.eye(k)[y_true]
    per_class_auc = {c: _auc(onehot[:, i], probs[:, i]) for i, c in enumerate(classes)}
    defined = [v for v in per_class_auc.values() if v is not None]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    positives, predicted, total = cm.sum(axis=1), cm.sum(axis=0), cm.sum()
    true_pos = np.diag(cm)
    sensitivity = {c: (float(true_pos[i] / positives[i]) if positives[i] else None) for i, c in enumerate(classes)}
    negatives = total - positives
    true_neg = total - positives - predicted + true_pos
    specificity = {c: (float(true_neg[i] / negatives[i]) if negatives[i] else None) for i, c in enumerate(classes)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced accuracy warns when a class is absent
        balanced = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else None
    return {
        "num_examples": int(len(y_true)),
        "auc": float(np.mean(defined)) if len(defined) == k else None,
        "auc_per_class": per_class_auc,
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "balanced_accuracy": balanced,
        "mcc": float(matthews_corrcoef(y_true, y_pred)) if len(y_true) else None,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "confusion_matrix": cm.tolist(),
    }
