"""A finished run's candidate clusterings, and the label-free choice of its output among them
(:mod:`clustkit.cluster.selection` holds the criteria; docs/selection.md explains them).

Candidates: the recipe's evaluation; the argmax of every soft-assignment head; spherical
k-means (the recipe's grouper) on the backbone and on every head, of the online network and,
when the recipe has one, of the momentum network; and whatever the ``candidates`` hook adds (a
second stage's streams, a refiner's head). Each is a :class:`Prediction`, so the chosen one
also tells ``clustkit predict`` how to place a new image.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import numpy as np
import torch

from clustkit.cluster.diagnostics import cluster_diagnostics
from clustkit.cluster.metrics import evaluate_clustering
from clustkit.cluster.neighbors import knn
from clustkit.cluster.selection import NEIGHBORS, Selection, select
from clustkit.engine.context import Prediction, RunContext


def is_probability(x: torch.Tensor) -> bool:
    """Whether a head's output rows are probability vectors (a soft-assignment head)."""
    return bool(x.numel()) and bool((x >= -1e-6).all()) and bool(
        torch.allclose(x.sum(1), torch.ones(len(x)), atol=1e-3))


def candidate_name(pred: Prediction) -> str:
    """``<kind>:<space>`` (``kmeans:momentum/projector`` for the momentum network)."""
    if pred.momentum and ":" in pred.source and "momentum/" not in pred.source:
        kind, space = pred.source.split(":", 1)
        return f"{kind}:momentum/{space}"
    return pred.source


def candidate_space(pred: Prediction) -> str:
    """The feature space a candidate reads, as recorded in ``summary.json``: the network space
    when its name is ``<kind>:<space>`` of its own ``space`` (argmax, k-means, UMAP), else the
    part of its name before the colon (all of ``iciclegcn_gcn:a``, ``:b``, ``:mean`` come from
    one second stage). A voted evaluation (``kmeans:projector+vote``) records the space it voted in."""
    kind, _, space = pred.source.partition(":")
    if space.endswith("+vote") or space.removeprefix("momentum/") == pred.space:
        return ("momentum/" if pred.momentum else "") + pred.space
    return kind


def feature_spaces(ctx: RunContext, momentum: bool) -> list[str]:
    net = ctx.momentum_model if momentum else ctx.model
    return ["backbone", *net.heads]


def space_candidates(ctx: RunContext, features: dict[str, torch.Tensor], momentum: bool,
                     known: Container[str] = (), vote: Any = None) -> dict[str, Prediction]:
    """argmax of each soft-assignment head and spherical k-means on every space of one network,
    except the candidates named in ``known`` (the recipe's own evaluation: no k-means twice).
    ``vote``: an evaluator config whose neighbour vote (``vote_k``) every candidate then gets."""
    out: dict[str, Prediction] = {}
    prefix = "momentum/" if momentum else ""
    suffix = "+vote" if vote is not None and vote.vote_k else ""

    def add(pred: Prediction) -> None:
        voted = ctx.vote(pred, vote, at_hand=features) if suffix else pred
        out[voted.source] = voted

    for space, feats in features.items():
        argmax, kmeans = f"argmax:{prefix}{space}", f"kmeans:{prefix}{space}"
        if argmax + suffix not in known and space != "backbone" and is_probability(feats):
            conf, labels = feats.max(1)
            add(Prediction(labels.numpy().astype(np.int64), argmax, conf.numpy(), space=space, rule="argmax",
                           momentum=momentum))
        if kmeans + suffix in known:
            continue
        result = ctx.group(feats, ctx.n_clusters, spherical=True)
        add(Prediction(np.asarray(result.labels, dtype=np.int64), kmeans, space=space, rule="cosine_centroid",
                       momentum=momentum, centroids=np.asarray(result.centroids, dtype=np.float32)))
    return out


def run_candidates(ctx: RunContext, recipe_pred: Prediction, every_space: bool = True,
                   features: dict[str, torch.Tensor] | None = None,
                   exclude: tuple[str, ...] = (), vote: Any = None) -> dict[str, Prediction]:
    """The recipe's evaluation first, then (``every_space``) the argmax and k-means candidates of
    every feature space but the heads in ``exclude`` (one a later stage has not trained yet), then
    the plugins' (``candidates`` hook). Unreadable items get -1. ``features``: the online
    network's spaces, when the caller has extracted them already. ``vote``: the evaluator config
    whose neighbour vote the argmax and k-means candidates get too (:func:`choose` passes the
    recipe's when its evaluation votes)."""
    out = {candidate_name(recipe_pred): recipe_pred}
    if every_space:
        for momentum in ([False, True] if ctx.has_momentum else [False]):
            if momentum or features is None:
                spaces = [s for s in feature_spaces(ctx, momentum) if s not in exclude]
                features = ctx.extract_spaces(spaces, momentum=momentum)
            features = {s: f for s, f in features.items() if s not in exclude}
            # known=out: the recipe's own evaluation keeps its settings
            out.update(space_candidates(ctx, features, momentum, known=out, vote=vote))
    for extra in ctx.hook.candidates(ctx=ctx):
        for name, pred in (extra or {}).items():
            out.setdefault(name, pred)
    unreadable = sorted(ctx.source.unreadable)
    for pred in out.values():
        pred.labels = np.asarray(pred.labels, dtype=np.int64)
        if unreadable:
            pred.labels = pred.labels.copy()
            pred.labels[unreadable] = -1
    return out


def sample_neighbors(backbone: torch.Tensor, idx: np.ndarray, k: int = NEIGHBORS) -> tuple[np.ndarray, np.ndarray]:
    """(idx, the ``k`` nearest items of each, by cosine on the whole dataset's backbone features):
    what the ``neighbors`` criterion reads."""
    x = torch.nn.functional.normalize(backbone.float(), dim=1).numpy()
    _, near = knn(x, min(k, len(x) - 1), rows=idx)
    return idx, near


def choose(ctx: RunContext, recipe_pred: Prediction, sample: tuple[np.ndarray, np.ndarray] | None,
           features: dict[str, torch.Tensor] | None = None,
           every_space: bool = True, exclude: tuple[str, ...] = ()) -> tuple[Prediction, dict[str, Any]]:
    """The run's output by ``run.select`` and the record of every candidate: labelled metrics
    where the dataset has labels (never read by the choice), label-free diagnostics (size balance,
    empty clusters, a silhouette on ``sample`` = (indices, backbone features)) and the score.
    ``features``, ``every_space``, ``exclude``: as in :func:`run_candidates` (even
    ``run.select = "recipe"`` lists every candidate: one extraction pass and a k-means per space)."""
    criterion = ctx.recipe.run.select
    idx, feats = sample if sample is not None else (None, None)
    near = None
    if criterion == "neighbors" and idx is not None:
        if features is None:
            features = ctx.extract_spaces([s for s in feature_spaces(ctx, False) if s not in exclude])
        near = sample_neighbors(features["backbone"], idx)
    # A neighbour vote makes a clustering agree with its neighbourhoods and less with unvoted
    # readings of the network, so a voted evaluation would lose a comparison it should win on
    # agreement: when the recipe's evaluation votes, every argmax / k-means candidate votes alike.
    voted = criterion != "recipe" and "vote_k" in recipe_pred.extra
    candidates = run_candidates(ctx, recipe_pred, every_space=every_space, features=features, exclude=exclude,
                                vote=ctx.recipe.evaluation if voted else None)
    recipe_name = candidate_name(recipe_pred)
    diagnostics = {name: cluster_diagnostics(p.labels, ctx.n_clusters, feats, feature_index=idx)
                   for name, p in candidates.items()}
    selection: Selection = select({n: p.labels for n, p in candidates.items()}, criterion, recipe_name,
                                  {n: d.get("silhouette") for n, d in diagnostics.items()}, near)
    labels = np.asarray(ctx.dataset.labels)
    has_labels = bool((labels >= 0).any())
    rows: dict[str, dict[str, Any]] = {}
    for name, pred in candidates.items():
        row: dict[str, Any] = {"space": candidate_space(pred), "rule": pred.rule}
        if name == recipe_name:
            row["recipe"] = True
        if selection.scores.get(name) is not None:
            row["score"] = selection.scores[name]
        row.update(diagnostics[name])
        if has_labels:
            row.update(evaluate_clustering(labels, pred.labels))
        rows[name] = row
    record = {"selected": selection.chosen, "candidates": rows,
              "selection": {"criterion": selection.criterion, "chosen": selection.chosen, "reason": selection.reason,
                            "recipe": recipe_name}}
    return candidates[selection.chosen], record
