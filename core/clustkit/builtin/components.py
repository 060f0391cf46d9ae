"""Factories and classes of the built-in components (imported only when a run builds them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clustkit import BuildContext, Prediction, RunContext
from clustkit.cluster.kmeans import kmeans
from clustkit.cluster.sharded import sharded_kmeans
from clustkit.nn.augment import IMAGENET_MEAN, IMAGENET_STD
from clustkit.nn.backbones import SmallCNN, TimmBackbone, TorchvisionResNet
from clustkit.nn.heads import MLPHead


def build_small_cnn(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    return SmallCNN(ctx.in_channels, cfg.width, cfg.out_dim)


def _input_norm(cfg: Any) -> bool:
    return cfg.input_norm == "model" or (cfg.input_norm == "auto" and (cfg.weights != "none"
                                                                       or getattr(cfg, "pretrained", False)))


def _preprocess(net: Any, cfg: Any, model: dict[str, Any]) -> Any:
    """The pretrained model's own evaluation preprocessing (``model``: its mean, std, input size,
    crop and interpolation), each part overridable by the recipe."""
    normalise = _input_norm(cfg)
    if normalise:
        net.set_input_norm(tuple(model["mean"]), tuple(model["std"]))
    size = cfg.input_size
    if size == "auto":
        size = int(model["input_size"][-1]) if normalise else "none"
    if size != "none":
        crop = float(model["crop_pct"] if cfg.crop_pct == "auto" else cfg.crop_pct)
        mode = model["interpolation"] if cfg.interpolation == "auto" else cfg.interpolation
        net.set_input_size(int(size), crop, "bicubic" if mode == "bicubic" else "bilinear")
    return net


def build_resnet(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    net = TorchvisionResNet(cfg.depth, ctx.in_channels, cfg.stem, cfg.weights, cfg.key_map, cfg.train,
                            ctx.recipe.path)
    # torchvision's weights: ImageNet statistics, Resize(256) + CenterCrop(224), bilinear
    return _preprocess(net, cfg, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 224, 224),
                                  "crop_pct": 0.875, "interpolation": "bilinear"})


def build_timm(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    net = TimmBackbone(cfg.model, ctx.in_channels, cfg.pretrained, cfg.weights, cfg.key_map, cfg.train,
                       ctx.recipe.path, **cfg.kwargs)
    pre = net.net.pretrained_cfg  # the model's own preprocessing, as timm publishes it
    return _preprocess(net, cfg, {"mean": pre.get("mean", IMAGENET_MEAN), "std": pre.get("std", IMAGENET_STD),
                                  "input_size": pre.get("input_size", (3, 224, 224)),
                                  "crop_pct": pre.get("crop_pct", 0.875),
                                  "interpolation": pre.get("interpolation", "bicubic")})


def build_mlp_head(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    out_dim = ctx.n_clusters if cfg.out_dim == "n_clusters" else int(cfg.out_dim)
    return MLPHead(ctx.backbone_dim, list(cfg.hidden), out_dim, cfg.output, cfg.batch_norm)


class KMeansGrouper:
    """The default grouper: ``clustkit.cluster.kmeans`` (FAISS, GPU index when available, or torch).

    In a multi-process run it ``accepts_shards``: every rank passes its ``rows`` of the feature
    matrix and the ranks run ``sharded_kmeans`` together, so nobody gathers the whole matrix; the
    labels come back as this rank's rows. With the whole matrix (``rows`` None) it runs ``kmeans``.
    """

    accepts_shards = True

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, n_init: int | None,
                      rows: range | None, ctx: RunContext) -> Any:
        options = dict(spherical=spherical, n_init=n_init or self.cfg.n_init, max_iter=self.cfg.max_iter, seed=seed,
                       backend=self.cfg.backend)
        if rows is not None:  # a multi-process run: the ranks cluster their shards together
            return sharded_kmeans(features, n_groups, **options)
        return kmeans(features, n_groups, **options)


class HeadArgmax:
    """Cluster = argmax of a soft-assignment head on the evaluation view (CC's ``forward_cluster``),
    then the neighbour vote when the config asks for one (``vote_k``)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    def evaluate(self, ctx: RunContext) -> Prediction:
        p = ctx.extract(self.cfg.head, momentum=self.cfg.momentum)
        conf, labels = p.max(dim=1)
        pred = Prediction(labels.numpy().astype(np.int64), kind="argmax", space=self.cfg.head,
                          momentum=self.cfg.momentum, rule="argmax", scores=conf.numpy())
        return ctx.vote(pred, self.cfg, at_hand={self.cfg.head: p})


class KMeansEvaluator:
    """The recipe's grouper (k-means unless ``[grouping]`` says otherwise) on extracted features (the
    backbone or a head), then the neighbour vote when the config asks for one (``vote_k``). The
    prediction is named after the grouper: ``kmeans:backbone``, ``spectral:projector``."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg
        self.kind = ctx.recipe.grouping.name

    def evaluate(self, ctx: RunContext) -> Prediction:
        head = None if self.cfg.features == "backbone" else self.cfg.features
        feats, rows = ctx.extract_shard(head, momentum=self.cfg.momentum)  # this rank's rows; all on one process
        result = ctx.group(feats, ctx.n_clusters, spherical=self.cfg.spherical, rows=rows)
        pred = Prediction(np.asarray(result.labels, dtype=np.int64), kind=self.kind, space=self.cfg.features,
                          momentum=self.cfg.momentum, rule="cosine_centroid" if self.cfg.spherical else "centroid",
                          centroids=np.asarray(result.centroids, dtype=np.float32),
                          extra={"kmeans_backend": getattr(result, "backend", ""),
                                 "kmeans_inertia": float(getattr(result, "inertia", float("nan")))})
        return ctx.vote(pred, self.cfg, at_hand={self.cfg.features: feats} if ctx.world_size == 1 else None)
