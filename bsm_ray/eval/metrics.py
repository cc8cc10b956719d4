"""Evaluation metrics, from the libraries made for them (scikit-learn, SciPy), plus the one
threshold rule the few-shot tasks use. Pure module."""

from __future__ import annotations

import numpy as np


def accuracy(y_true, y_pred) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def mcc(y_true, y_pred) -> float:
    """Matthews correlation coefficient (GUE's metric); 0 when a row or column is empty."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(y_true, y_pred))


def spearman(x, y) -> float:
    """Spearman rank correlation (ties get average ranks); nan when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def roc_auc(y_true, scores) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, scores))


def best_threshold(scores, y_true) -> float:
    """The threshold t maximising accuracy of `score >= t -> 1` (first best; candidates are the
    midpoints between consecutive distinct scores, and one below / above all)."""
    s = np.unique(np.asarray(scores, dtype=float))
    y = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    candidates = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    acc = [np.mean((scores >= t).astype(int) == y) for t in candidates]
    return float(candidates[int(np.argmax(acc))])
