"""Choosing, without labels, which of a run's candidate clusterings is its output.

A trained run can cluster its dataset several ways: the argmax of each soft-assignment head,
k-means on the backbone and on each head's features, a second stage's or a refiner's labels.
They can differ by several points of accuracy, and which is best changes between methods and
datasets. This module scores each candidate from the clusterings themselves and picks one; it
never reads ground-truth labels (a test removes them and checks that the choice stays).

Criteria (``run.select``):

- ``agreement`` (the default): the mean normalised mutual information between the candidate and
  every other candidate. The candidate the network's other readings agree with most is a
  consensus (median) partition. A head trained for clustering gives two readings that agree (its
  argmax and k-means on its output), which is evidence for it as well. The recipe's own
  evaluation is kept unless another candidate scores more than :data:`RECIPE_MARGIN` higher:
  the recipe's choice is the method's, and a near-tie is no evidence against it.
- ``neighbors``: how well the candidate keeps neighbours together. For a sample of items, the
  share of each one's :data:`NEIGHBORS` nearest neighbours (cosine, on the backbone features of
  the whole dataset) that are in its cluster, corrected for chance: two random items share a
  cluster with probability Σ_c p_c², so the score is (share − Σ p²) / (1 − Σ p²), 0 for a
  partition that ignores the features and 1 for one that never cuts a neighbourhood. It does
  not favour a family of candidates that share their mistakes (a head's argmax and k-means on
  the same head), as ``agreement`` does, and it sees clusters of any shape (UMAP's), which the
  silhouette does not.
- ``silhouette``: the cosine silhouette of the candidate on a sample of the backbone features.
  It favours k-means on the backbone by construction; it is offered for comparison.
- ``recipe``: the recipe's own evaluation, always (the behaviour before candidates existed).

Every criterion first drops the candidates that use fewer clusters than the best-filled one (a
candidate with empty clusters has collapsed; IcicleGCN's unconverged stream does this). Ties go
to the recipe's evaluation, then to the order the candidates are listed in.

Only numpy and scikit-learn: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

__all__ = ["CRITERIA", "NEIGHBORS", "RECIPE_MARGIN", "Criterion", "Selection", "agreement_scores",
           "neighbor_scores", "select"]

Criterion = Literal["agreement", "neighbors", "silhouette", "recipe"]
CRITERIA: tuple[str, ...] = ("agreement", "neighbors", "silhouette", "recipe")
#: neighbours per sampled item of the ``neighbors`` criterion
NEIGHBORS = 10
#: how much higher (in mean NMI) another candidate must score to replace the recipe's evaluation
RECIPE_MARGIN = 0.005


@dataclass
class Selection:
    """The chosen candidate, the criterion, a one-line reason and every candidate's score."""

    chosen: str
    criterion: str
    reason: str
    scores: dict[str, float | None] = field(default_factory=dict)
    eligible: list[str] = field(default_factory=list)


def _nmi(a: np.ndarray, b: np.ndarray) -> float:
    keep = (a >= 0) & (b >= 0)  # -1: an item without a cluster (an unreadable image)
    if not keep.any():
        return 0.0
    return float(normalized_mutual_info_score(a[keep], b[keep], average_method="arithmetic"))


def agreement_scores(candidates: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Mean NMI of each candidate with every other candidate (None when it is the only one)."""
    names = list(candidates)
    pair: dict[frozenset[str], float] = {}
    out: dict[str, float | None] = {}
    for a in names:
        values = []
        for b in names:
            if b != a:
                key = frozenset((a, b))
                if key not in pair:
                    pair[key] = _nmi(np.asarray(candidates[a]), np.asarray(candidates[b]))
                values.append(pair[key])
        out[a] = round(float(np.mean(values)), 6) if values else None
    return out


def neighbor_scores(candidates: dict[str, np.ndarray], query: np.ndarray,
                    neighbors: np.ndarray) -> dict[str, float | None]:
    """Chance-corrected kNN consistency of each candidate: ``query`` are item indices, ``neighbors``
    (len(query) × k) the indices of their nearest items. Items without a cluster (-1) count for
    neither side; a candidate with a single cluster scores None (nothing to correct against)."""
    query, neighbors = np.asarray(query), np.asarray(neighbors)
    out: dict[str, float | None] = {}
    for name, labels in candidates.items():
        labels = np.asarray(labels)
        q, nb = labels[query][:, None], labels[neighbors]
        valid = (q >= 0) & (nb >= 0)
        used = labels[labels >= 0]
        if not valid.any() or len(np.unique(used)) < 2:
            out[name] = None
            continue
        share = float(((nb == q) & valid).sum() / valid.sum())
        chance = float(((np.bincount(used) / len(used)) ** 2).sum())
        out[name] = round((share - chance) / (1.0 - chance), 6)
    return out


def clusters_used(labels: np.ndarray) -> int:
    labels = np.asarray(labels)
    return len(np.unique(labels[labels >= 0]))


def select(candidates: dict[str, np.ndarray], criterion: str, recipe: str,
           silhouettes: dict[str, float | None] | None = None,
           neighbors: tuple[np.ndarray, np.ndarray] | None = None) -> Selection:
    """Pick one of ``candidates`` (name → one cluster id per item, -1 for none) by ``criterion``.

    ``recipe`` names the recipe's own evaluation among them (the tie-break, and the answer of
    the ``recipe`` criterion); ``silhouettes`` are the candidates' sampled silhouettes (the
    ``silhouette`` criterion); ``neighbors`` = (sampled item indices, their nearest items'
    indices) in backbone space (the ``neighbors`` criterion)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown selection criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if recipe not in candidates:
        raise ValueError(f"the recipe's candidate {recipe!r} is not among the candidates {sorted(candidates)}")
    if criterion == "recipe":
        return Selection(recipe, criterion, "run.select = 'recipe': the recipe's own evaluation", {}, [recipe])
    used = {name: clusters_used(c) for name, c in candidates.items()}
    most = max(used.values())
    eligible = [n for n in candidates if used[n] == most]
    dropped = [n for n in candidates if used[n] < most]
    if criterion == "agreement":
        scores = agreement_scores(candidates)
        what = "mean NMI with the other candidates"
    elif criterion == "neighbors":
        scores = neighbor_scores(candidates, *neighbors) if neighbors is not None else {}
        what = "chance-corrected share of backbone neighbours kept in the same cluster"
    else:
        scores = dict(silhouettes or {})
        what = "cosine silhouette on a sample of the backbone features"
    scored = [n for n in eligible if scores.get(n) is not None]
    if not scored:
        reason = f"no eligible candidate has a {criterion} score; the recipe's own evaluation is kept"
        return Selection(recipe, criterion, reason, scores, eligible)
    order = {n: i for i, n in enumerate(candidates)}
    best = max(scored, key=lambda n: (scores[n], n == recipe, -order[n]))
    reason = f"highest {what} ({scores[best]:.4f})"
    if criterion in ("agreement", "neighbors") and best != recipe and recipe in scored and \
            scores[best] - scores[recipe] <= RECIPE_MARGIN:  # type: ignore[operator]
        reason = (f"the recipe's evaluation: its {what} ({scores[recipe]:.4f}) is within {RECIPE_MARGIN} of the "
                  f"highest ({best}, {scores[best]:.4f})")
        best = recipe
    if dropped:
        reason += f"; left out for using fewer than {most} clusters: {', '.join(dropped)}"
    return Selection(best, criterion, reason, scores, eligible)
