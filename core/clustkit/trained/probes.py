"""Representation checks of a run's features with scikit-learn: kNN and linear-probe accuracy
(5-fold cross-validation; a researcher's check of the features, never a clustering)."""

from __future__ import annotations

import numpy as np

#: probes subsample larger datasets to keep ``clustkit evaluate`` quick on a CPU
MAX_ITEMS = 10_000


def _sample(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_ITEMS:
        return x, y
    idx = np.random.default_rng(seed).choice(len(x), MAX_ITEMS, replace=False)
    return x[idx], y[idx]


def knn_accuracy(x: np.ndarray, y: np.ndarray, k: int = 20, seed: int = 0) -> float:
    """Cross-validated accuracy of a cosine k-nearest-neighbour vote."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _sample(x, y, seed)
    folds = StratifiedKFold(n_splits=_folds(y), shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(x) // 2), metric="cosine")
    return round(float(cross_val_score(knn, x, y, cv=folds).mean()), 6)


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _sample(x, y, seed)
    folds = StratifiedKFold(n_splits=_folds(y), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return round(float(cross_val_score(probe, x, y, cv=folds).mean()), 6)


def _folds(y: np.ndarray) -> int:
    """5 folds, fewer when the smallest class is smaller."""
    return int(max(2, min(5, np.unique(y, return_counts=True)[1].min() if len(y) else 2)))
