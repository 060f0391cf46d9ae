"""Clusterings of a built run: the recipe's evaluation, its refinement stages, the neighbour vote,
the candidate clusterings and the label-free choice among them (docs/selection.md).

Used, once each, by the run (:mod:`clustkit.engine.run`), by the services a component reaches
through ``RunContext`` (``evaluate``, ``vote``, ``select``) and by a loaded run (``clustkit.trained``).

Candidates: the recipe's evaluation (after its ``[refine.*]`` stages); the argmax of every
soft-assignment head; the recipe's grouper (spherical) on the backbone and on every head, of the
online network and, when the recipe has one, of the momentum network; and what components add
through their ``candidates`` method (a second stage's streams). Each is a
:class:`~clustkit.cluster.prediction.Prediction`, so the chosen one also tells ``clustkit predict``
how to place a new image.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clustkit.cluster.diagnostics import cluster_diagnostics, subsample
from clustkit.cluster.metrics import evaluate_clustering
from clustkit.cluster.neighbors import knn
from clustkit.cluster.prediction import Prediction, Vote
from clustkit.cluster.rows import cluster_means, unit_rows
from clustkit.cluster.selection import NEIGHBORS, Selection, select
from clustkit.cluster.votes import neighbor_vote
from clustkit.engine.features import extract_spaces
from clustkit.errors import PluginError, RunDiverged

if TYPE_CHECKING:
    from clustkit.engine.components import Bound
    from clustkit.engine.state import RunState


# --- the recipe's clustering ------------------------------------------------------------------


def evaluation(run: RunState) -> Prediction:
    """The recipe's ``[evaluation]`` on the network as it is now; unreadable items get cluster -1."""
    return _checked(run, run.components.evaluator, run.components.evaluator.call(ctx=run.ctx))


def refined(run: RunState) -> Prediction:
    """The run's clustering after training: the evaluation, then each ``[refine.<id>]`` stage in
    recipe order on the previous one's output (a stage that already finished returns its result)."""
    pred = evaluation(run)
    for stage in run.components.refiners:
        pred = _checked(run, stage, stage.call(previous=pred, ctx=run.ctx))
    return pred


def metrics(run: RunState, pred: Prediction) -> dict[str, float]:
    """ACC/NMI/ARI/AMI of ``pred`` when the dataset has labels (unreadable items left out), else {}."""
    labels = np.asarray(run.ctx.dataset.labels)
    return evaluate_clustering(labels, pred.labels) if (labels >= 0).any() else {}


def _checked(run: RunState, component: Bound, pred: Any) -> Prediction:
    """A component's clustering, checked: a Prediction with one finite-scored label per item;
    unreadable items get cluster -1."""
    n = len(run.ctx.dataset)
    if not isinstance(pred, Prediction):
        raise PluginError(f"{component.describe()} returned {type(pred).__name__} from {component.method}; it must "
                          "return a clustkit.Prediction (docs/api.md, 'Prediction').")
    pred.labels = np.asarray(pred.labels, dtype=np.int64)
    if pred.labels.shape != (n,):
        raise PluginError(f"{component.describe()} returned {pred.labels.shape[0] if pred.labels.ndim else 0} labels "
                          f"from {component.method}; the dataset has {n} items (one label per item, in index order).")
    if pred.scores is not None and not np.isfinite(pred.scores).all():
        raise RunDiverged(f"the clustering {pred.name} produced non-finite scores at epoch {run.ctx.epoch}; the "
                          "network has diverged. Lower optimizer.lr and resume from the last good checkpoint.")
    return _mark_unreadable(run, pred)


def _mark_unreadable(run: RunState, pred: Prediction) -> Prediction:
    unreadable = sorted(run.sources["data"].unreadable)
    if unreadable:
        pred.labels = pred.labels.copy()
        pred.labels[unreadable] = -1
    return pred


# --- the neighbour vote -----------------------------------------------------------------------


def vote(run: RunState, pred: Prediction, cfg: Any, at_hand: dict[str, Any] | None = None,
         metric: str = "cosine") -> Prediction:
    """``pred`` after the neighbour vote ``cfg`` (an ``EvaluatorConfig``) asks for; ``pred`` itself
    when ``cfg.vote_k`` is 0. Every item takes the majority cluster of its ``vote_k`` nearest items
    in ``cfg.vote_features`` (default: the space ``pred`` read), ``vote_rounds`` times; the space is
    the momentum network's when ``pred`` read that network and it has the space. The result places
    new images by the nearest mean of its clusters in that space. ``at_hand``: whole feature
    matrices by space, of the network ``pred`` read (the voting space is extracted otherwise)."""
    if not getattr(cfg, "vote_k", 0):
        return pred
    ctx = run.ctx
    space = cfg.vote_features or pred.space
    momentum = pred.momentum and (space == "backbone" or space in ctx.momentum_model.heads)
    features = (at_hand or {}).get(space) if momentum == pred.momentum else None
    if features is None:
        features = ctx.extract(None if space == "backbone" else space, momentum=momentum)
    x = np.asarray(features, dtype=np.float32)
    before = np.asarray(pred.labels, dtype=np.int64)
    labels, share = neighbor_vote(x, before, cfg.vote_k, cfg.vote_rounds, ctx.n_clusters, metric)
    rows = unit_rows(x) if metric == "cosine" else x
    return replace(pred, labels=labels, scores=share, rule="cosine_centroid" if metric == "cosine" else "centroid",
                   extra=dict(pred.extra),
                   centroids=cluster_means(rows, labels, ctx.n_clusters),
                   vote=Vote(cfg.vote_k, cfg.vote_rounds, space, momentum, int((labels != before).sum())))


# --- candidates and the label-free choice -----------------------------------------------------


def is_probability(x: torch.Tensor) -> bool:
    """Whether a head's output rows are probability vectors (a soft-assignment head)."""
    return bool(x.numel()) and bool((x >= -1e-6).all()) and bool(
        torch.allclose(x.sum(1), torch.ones(len(x)), atol=1e-3))


def feature_spaces(run: RunState, momentum: bool) -> list[str]:
    net = run.ctx.momentum_model if momentum else run.ctx.model
    return ["backbone", *net.heads]


def space_candidates(run: RunState, features: dict[str, torch.Tensor], momentum: bool,
                     known: Container[str] = (), vote_cfg: Any = None) -> dict[str, Prediction]:
    """The argmax of each soft-assignment head and the recipe's grouper (spherical) on every space
    of one network, except the candidates named in ``known`` (the recipe's own evaluation: no
    clustering twice). ``vote_cfg``: an evaluator config whose neighbour vote every candidate gets."""
    ctx = run.ctx
    grouper = run.recipe.grouping.name
    voting = vote_cfg is not None and bool(vote_cfg.vote_k)
    out: dict[str, Prediction] = {}

    def add(pred: Prediction) -> None:
        voted = vote(run, pred, vote_cfg, at_hand=features) if voting else pred
        out[voted.name] = voted

    for space, feats in features.items():
        argmax = Prediction(np.zeros(0, np.int64), "argmax", space, momentum, rule="argmax")
        if space != "backbone" and _unknown(argmax, known, voting) and is_probability(feats):
            conf, labels = feats.max(1)
            add(replace(argmax, labels=labels.numpy().astype(np.int64), scores=conf.numpy()))
        if not _unknown(Prediction(np.zeros(0, np.int64), grouper, space, momentum), known, voting):
            continue
        result = ctx.group(feats, ctx.n_clusters, spherical=True)
        add(Prediction(np.asarray(result.labels, dtype=np.int64), grouper, space, momentum, rule="cosine_centroid",
                       centroids=np.asarray(result.centroids, dtype=np.float32)))
    return out


def _unknown(pred: Prediction, known: Container[str], voting: bool) -> bool:
    return (pred.name + ("+vote" if voting else "")) not in known


def run_candidates(run: RunState, recipe_pred: Prediction, every_space: bool = True,
                   features: dict[str, torch.Tensor] | None = None, exclude: tuple[str, ...] = (),
                   vote_cfg: Any = None) -> dict[str, Prediction]:
    """The recipe's clustering first, then (``every_space``) the argmax and grouper candidates of
    every feature space but the heads in ``exclude`` (one a later stage has not trained yet), then
    the components' own (their ``candidates`` method, in recipe order). Unreadable items get -1.
    ``features``: the online network's spaces, when the caller has extracted them already."""
    out = {recipe_pred.name: recipe_pred}
    if every_space:
        for momentum in ([False, True] if run.ctx.has_momentum else [False]):
            if momentum or features is None:
                spaces = [s for s in feature_spaces(run, momentum) if s not in exclude]
                features = extract_spaces(run, spaces, momentum=momentum)
            features = {s: f for s, f in features.items() if s not in exclude}
            # known=out: the recipe's own evaluation keeps its settings
            out.update(space_candidates(run, features, momentum, known=out, vote_cfg=vote_cfg))
    for source in run.components.candidate_sources:
        extra = source.call(ctx=run.ctx)
        for name, pred in (extra or {}).items():
            if not isinstance(pred, Prediction):
                raise PluginError(f"{source.describe()} returned {type(pred).__name__} for candidate {name!r}; "
                                  "candidates(ctx) returns {name: clustkit.Prediction}.")
            out.setdefault(name, pred)
    for pred in out.values():
        pred.labels = np.asarray(pred.labels, dtype=np.int64)
        _mark_unreadable(run, pred)
    return out


def sample_features(run: RunState, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of a seeded sample of the items, their backbone features on the evaluation view):
    what the silhouette and the report's embedding read."""
    idx = subsample(len(run.ctx.dataset), seed=run.ctx.seed if seed is None else seed)
    return idx, run.ctx.extract(indices=idx).numpy()


def sample_neighbors(backbone: torch.Tensor, idx: np.ndarray, k: int = NEIGHBORS) -> tuple[np.ndarray, np.ndarray]:
    """(idx, the ``k`` nearest items of each, by cosine on the whole dataset's backbone features):
    what the ``neighbors`` criterion reads."""
    x = torch.nn.functional.normalize(backbone.float(), dim=1).numpy()
    _, near = knn(x, min(k, len(x) - 1), rows=idx)
    return idx, near


def choose(run: RunState, recipe_pred: Prediction, sample: tuple[np.ndarray, np.ndarray] | None,
           features: dict[str, torch.Tensor] | None = None, every_space: bool = True,
           exclude: tuple[str, ...] = ()) -> tuple[Prediction, dict[str, Any]]:
    """The run's output by ``run.select`` and the record of every candidate: labelled metrics
    where the dataset has labels (never read by the choice), label-free diagnostics (size balance,
    empty clusters, a silhouette on ``sample`` = (indices, backbone features)) and the score.
    ``features``, ``every_space``, ``exclude``: as in :func:`run_candidates` (even
    ``run.select = "recipe"`` lists every candidate: one extraction pass and a clustering per space)."""
    ctx = run.ctx
    criterion = run.recipe.run.select
    idx, feats = sample if sample is not None else (None, None)
    near = None
    if criterion == "neighbors" and idx is not None:
        if features is None:
            features = extract_spaces(run, [s for s in feature_spaces(run, False) if s not in exclude])
        near = sample_neighbors(features["backbone"], idx)
    # A neighbour vote makes a clustering agree with its neighbourhoods and less with unvoted
    # readings of the network, so a voted evaluation would lose a comparison it should win on
    # agreement: when the recipe's evaluation votes, every argmax / grouper candidate votes alike.
    voting = criterion != "recipe" and recipe_pred.vote is not None
    candidates = run_candidates(run, recipe_pred, every_space=every_space, features=features, exclude=exclude,
                                vote_cfg=run.recipe.evaluation if voting else None)
    diagnostics = {name: cluster_diagnostics(p.labels, ctx.n_clusters, feats, feature_index=idx)
                   for name, p in candidates.items()}
    selection: Selection = select({n: p.labels for n, p in candidates.items()}, criterion, recipe_pred.name,
                                  {n: d.get("silhouette") for n, d in diagnostics.items()}, near)
    labels = np.asarray(ctx.dataset.labels)
    has_labels = bool((labels >= 0).any())
    rows: dict[str, dict[str, Any]] = {}
    for name, pred in candidates.items():
        row: dict[str, Any] = {"space": pred.space_label, "rule": pred.rule}
        if name == recipe_pred.name:
            row["recipe"] = True
        if selection.scores.get(name) is not None:
            row["score"] = selection.scores[name]
        row.update(diagnostics[name])
        if has_labels:
            row.update(evaluate_clustering(labels, pred.labels))
        rows[name] = row
    record = {"selected": selection.chosen, "candidates": rows,
              "selection": {"criterion": selection.criterion, "chosen": selection.chosen, "reason": selection.reason,
                            "recipe": recipe_pred.name}}
    return candidates[selection.chosen], record


def chosen(run: RunState, recipe_pred: Prediction, features: dict[str, torch.Tensor] | None = None,
           exclude: tuple[str, ...] = ()) -> tuple[Prediction, dict[str, Any]]:
    """:func:`choose` on a fresh sample of features: what ``RunContext.select`` and a loaded run use."""
    return choose(run, recipe_pred, sample_features(run), features, exclude=exclude)
