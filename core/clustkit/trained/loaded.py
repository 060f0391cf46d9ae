"""A finished (or checkpointed) run, loaded for use: features, cluster assignment of new images,
re-evaluation with every candidate clustering, and representation probes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clustkit.cluster.rows import cluster_means, unit_rows
from clustkit.engine.run_folder import ASSIGNMENTS, CHECKPOINT, RECIPE, SUMMARY
from clustkit.errors import UserError


@dataclass
class Assignment:
    """Clusters of some images: one row per image, in input order."""

    clusters: np.ndarray                  # cluster id per image (-1: the file could not be read)
    confidence: np.ndarray                # in [0, 1]: the max probability of the cluster head, or of
                                          # the Student-t soft assignment to the centroids (DEC's q);
                                          # NaN for an unreadable file
    distance: np.ndarray | None = None    # distance to the chosen centroid (centroid rules only; NaN: unreadable)
    paths: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None   # the features the rule read, when asked for


def _rows(x: np.ndarray, cosine: bool) -> np.ndarray:
    return unit_rows(x) if cosine else x


class TrainedRun:
    """A run folder loaded for use; build one with :func:`load_run`. ``ctx`` is the run's
    ``RunContext`` (its network, dataset and services); ``state`` the engine's ``RunState``
    behind it, for tools of this repository (not part of the stable API)."""

    def __init__(self, folder: Path, run: Any, summary: dict[str, Any], same_data: bool):
        self.folder = folder
        self.state = run
        self.ctx = run.ctx
        self.summary = summary
        self.same_data = same_data
        assign = run.assignment or summary.get("assign") or {}  # the final checkpoint's, else summary.json's
        self.rule: str = assign.get("rule", "centroid")
        self.space: str = assign.get("space", "backbone")
        self.momentum: bool = bool(assign.get("momentum", False))
        stored = assign.get("centroids")
        self._centroids: np.ndarray | None = None if stored is None else np.asarray(stored, dtype=np.float32)

    # -- features ---------------------------------------------------------------------------
    @property
    def heads(self) -> list[str]:
        return sorted(self.ctx.model.heads)

    def features(self, space: str = "backbone", images: Any = None, *, momentum: bool = False) -> np.ndarray:
        """Features ``space`` ("backbone" or a head) of the run's dataset, or of ``images`` (a
        dataset, or files and folders), on the evaluation view."""
        if space != "backbone" and space not in self.ctx.model.heads:
            raise UserError(f"{self.folder}: the network has no head {space!r}; choose backbone or one of: "
                            f"{', '.join(self.heads)}.")
        source = None if images is None else self._source(images)
        head = None if space == "backbone" else space
        return self.ctx.extract(head, momentum=momentum, source=source).numpy()

    def _source(self, images: Any) -> Any:
        from clustkit.engine.build import batch_source
        from clustkit.trained.inputs import image_dataset

        if not hasattr(images, "labels"):
            images = image_dataset([images] if isinstance(images, (str, os.PathLike)) else list(images),
                                   self.ctx.image_size, self.ctx.in_channels)
        if images.channels != self.ctx.in_channels or tuple(images.image_size) != tuple(self.ctx.image_size):
            raise UserError(f"the images are {images.channels}×{tuple(images.image_size)} but {self.folder} was "
                            f"trained on {self.ctx.in_channels}×{tuple(self.ctx.image_size)} images.")
        source = batch_source(self.ctx.recipe, images, self.ctx.seed, self.ctx.device)
        source.max_unreadable = 1.0  # predicting: report an unreadable file, give it cluster -1, go on
        return source

    # -- assigning clusters ---------------------------------------------------------------------
    def run_clusters(self) -> np.ndarray:
        """The run's own final clusters (``assignments.csv``), one per item of its dataset."""
        path = self.folder / ASSIGNMENTS
        if not path.exists():
            raise UserError(f"{self.folder} has no {ASSIGNMENTS}: the run has not finished (resume it first).")
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)[:, 1]

    def centroids(self) -> np.ndarray:
        """The centre of each of the run's clusters in its clustering space: the evaluator's own
        centroids (k-means) when the checkpoint holds them, else the mean feature of each cluster
        of ``assignments.csv`` (e.g. after a GCN second stage)."""
        if self._centroids is None:
            if not self.same_data:
                raise UserError(f"{self.folder} assigns images by its clusters' mean features, which are computed "
                                "on its own dataset: drop the [data] overrides, or pass image files instead.")
            clusters = self.run_clusters()
            feats = _rows(self.features(self.space, momentum=self.momentum), self.rule == "cosine_centroid")
            self._centroids = cluster_means(feats, clusters, int(self.ctx.n_clusters))
        return self._centroids

    def assign(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(clusters, confidence, distance or None) for features in the run's clustering space."""
        if self.rule == "argmax":
            return feats.argmax(1).astype(np.int64), feats.max(1).astype(np.float64), None
        cosine = self.rule == "cosine_centroid"
        x = _rows(feats, cosine).astype(np.float64)
        cent = self.centroids().astype(np.float64)
        live = np.isfinite(cent).all(1)  # an empty cluster has no centroid
        cent[live] = _rows(cent[live], cosine)
        d2 = np.full((len(x), len(cent)), np.inf)
        d2[:, live] = np.maximum((x ** 2).sum(1)[:, None] - 2 * x @ cent[live].T + (cent[live] ** 2).sum(1)[None], 0)
        clusters = d2.argmin(1)
        q = 1.0 / (1.0 + d2)  # Student-t kernel with one degree of freedom, as DEC's soft assignment
        q /= q.sum(1, keepdims=True)
        rows = np.arange(len(x))
        return clusters.astype(np.int64), q[rows, clusters], np.sqrt(d2[rows, clusters])

    def predict(self, images: Any, *, embedding: bool = False) -> Assignment:
        """Clusters of new images (files, folders, or a dataset) by the run's own rule: the
        argmax of its cluster head, or the nearest of its clusters' mean features. A file that
        cannot be read gets cluster -1 and NaN for its confidence and distance."""
        source = self._source(images)
        head = None if self.space == "backbone" else self.space
        feats = self.ctx.extract(head, momentum=self.momentum, source=source).numpy()
        clusters, conf, dist = self.assign(feats)
        bad = sorted(source.unreadable)
        if bad:
            clusters[bad] = -1
            conf = conf.astype(np.float64)
            conf[bad] = np.nan
            if dist is not None:
                dist = dist.astype(np.float64)
                dist[bad] = np.nan
        paths = list(getattr(source.dataset, "paths", [str(i) for i in range(len(clusters))]))
        return Assignment(clusters, conf, dist, paths, feats if embedding else None)

    # -- evaluation ---------------------------------------------------------------------------
    def all_features(self) -> dict[str, np.ndarray]:
        """The run's dataset in every feature space: the backbone and each head (one pass)."""
        spaces = self.ctx.extract_spaces(["backbone", *self.heads])
        return {space: feats.numpy() for space, feats in spaces.items()}

    def candidates(self) -> dict[str, Any]:
        """Every clustering the run can give its dataset and the label-free choice among them, as
        the run records them at its end (``summary.json["candidates"]`` and ``["selection"]``;
        docs/selection.md): the recipe's evaluation, the argmax of each soft-assignment head,
        k-means on every feature space, and the plugins' own (a second stage's streams)."""
        return self._candidates()[1]

    def _candidates(self, features: dict[str, torch.Tensor] | None = None) -> tuple[Any, dict[str, Any]]:
        from clustkit.engine.evaluation import chosen, evaluation, refined

        # a finished run's stages have their results; an unfinished one's would train: then only the evaluation
        recipe_pred = refined(self.state) if self.state.phase == "done" else evaluation(self.state)
        return chosen(self.state, recipe_pred, features)

    def evaluate(self, probes: bool = True) -> dict[str, Any]:
        """Metrics (where the dataset has labels), label-free diagnostics and selection score of
        every candidate, the label-free choice, and kNN and linear-probe accuracy of the backbone
        features."""
        from clustkit.trained.probes import knn_accuracy, linear_probe_accuracy

        labels = np.asarray(self.ctx.dataset.labels)
        features = self.ctx.extract_spaces(["backbone", *self.heads])  # once, for the candidates and the probes
        _, record = self._candidates(features)
        result: dict[str, Any] = {"run": str(self.folder), "dataset": getattr(self.ctx.dataset, "name", ""),
                                  "n_samples": len(labels), "selection": record["selection"],
                                  "candidates": record["candidates"]}
        if probes and bool((labels >= 0).any()):
            feats = features["backbone"].numpy()
            keep = labels >= 0
            result["knn_acc"] = knn_accuracy(feats[keep], labels[keep], seed=self.ctx.seed)
            result["linear_probe_acc"] = linear_probe_accuracy(feats[keep], labels[keep], seed=self.ctx.seed)
        return result


def load_run(folder: str | os.PathLike, *, overrides: Sequence[str] = (), device: str | None = None) -> TrainedRun:
    """Rebuild a run from its folder (``recipe.toml`` + ``checkpoints/last.pt``) for use.
    ``overrides`` (``"data.split='test'"``, ``"evaluation.vote_k=10"``, ...) change the dataset it
    reads or how it is evaluated; the run's component state (a finished stage's result) is kept
    unless the data changes. ``device``: the device (default: the recipe's). The run folder is
    only read, never written; a missing or damaged file is a ``UserError`` naming it."""
    from clustkit.engine.build import build_run
    from clustkit.engine.checkpoint import read_checkpoint, restore_trained
    from clustkit.plugin_system.manager import get_plugins
    from clustkit.recipe import apply_overrides, parse_override, read_toml, validate

    path = Path(os.path.expanduser(str(folder)))
    for name in (RECIPE, CHECKPOINT):
        if not (path / name).exists():
            raise UserError(f"{path} is not a run folder: it has no {name}. Pass the folder a `clustkit run` wrote "
                            f"(it holds {RECIPE}, {SUMMARY} and {CHECKPOINT}).")
    written_by = read_checkpoint(path / CHECKPOINT).get("clustkit")  # a damaged one is named before anything is built
    summary_file = path / SUMMARY
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{summary_file} is damaged and cannot be read as JSON ({exc}); the run's checkpoint is "
                        "intact: `clustkit run --resume` writes the summary again.") from None
    extra = list(overrides)
    # only an override of [data] or [unlabeled] changes what the run reads (evaluation.vote_k re-reads it)
    same_data = not any(parse_override(o, str(path / RECIPE))[0][0] in ("data", "unlabeled") for o in overrides)
    if not same_data and summary.get("n_clusters"):  # another dataset: keep the heads' trained size
        extra.append(f"run.n_clusters={int(summary['n_clusters'])}")
    if device is not None:
        extra.append(f'run.device="{device}"')
    plugins = get_plugins()
    raw = read_toml(path / RECIPE)
    missing = [p for p in (raw.get("run") or {}).get("plugins", []) if p not in plugins.info]
    if missing:
        raise UserError(f"{path / RECIPE} needs the plugin(s) {', '.join(map(repr, missing))} (run.plugins), which "
                        "are not installed or are disabled here: the run's components come from them. Install them, "
                        "or point CLUSTKIT_PLUGINS_DIR at the folder of a loose plugin file.")
    if written_by is None:  # clustkit 0.1 wrote every dataset option into recipe.toml
        raw = _without_unused_dataset_options(raw, plugins.registry)
    recipe = validate(apply_overrides(raw, extra, str(path / RECIPE)), plugins.registry, str(path / RECIPE))
    run = build_run(recipe, plugins, None)
    restore_trained(path / CHECKPOINT, run, components=same_data, overrides=", ".join(overrides))
    run.ctx.model.eval()
    return TrainedRun(path, run, summary, same_data)


#: What clustkit 0.1 wrote into every run's ``[data]``, although only some datasets read it: the
#: options' shared defaults, which its dataset factory left out when it built the dataset.
_V01_DATASET_DEFAULTS = {"superclasses": True, "unlabeled": False, "channels": 3, "in_memory": "auto"}


def _without_unused_dataset_options(raw: dict[str, Any], registry: Any) -> dict[str, Any]:
    """A 0.1 run folder's recipe as the run used it: each dataset section without the options its
    dataset does not take, or takes with another default, that still hold 0.1's shared default."""
    out = dict(raw)
    for section in ("data", "unlabeled"):
        table = raw.get(section)
        spec = registry.get("dataset", table.get("name")) if isinstance(table, dict) else None
        if spec is None:
            continue
        fields = spec.config_model().model_fields
        out[section] = {k: v for k, v in table.items()
                        if not (k in _V01_DATASET_DEFAULTS and v == _V01_DATASET_DEFAULTS[k]
                                and (k not in fields or fields[k].default != v))}
    return out
