"""The recipe schema: the core sections (``run``, ``optimizer``, ``schedule``, ``momentum``), the
component sections (each validated by its plugin's config model) and the validated :class:`Recipe`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    """How to train: seeds, epochs, batch, device, evaluation and checkpoint cadence."""

    name: str | None = None
    seed: int = 0
    epochs: int = Field(100, ge=0)
    batch_size: int = Field(256, ge=2)
    eval_batch_size: int = Field(512, ge=1)
    drop_last: bool = True
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers decoding image files read from disk; 'auto': none for images in "
        "memory, else one per CPU of this process (at most 8)")
    n_clusters: int | None = Field(None, ge=2)
    eval_every: int = Field(0, ge=0, description="epochs between evaluations; 0 = only at the end")
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the backbones (in place, so checkpoints keep their keys); "
                          "the first steps pay for the compilation")
    deterministic: bool = False
    select: Literal["agreement", "neighbors", "silhouette", "recipe"] = Field(
        "agreement", description="how the run's output is chosen among its candidate clusterings, without labels: "
        "'agreement' (mean NMI with the other feature spaces' candidates), 'neighbors' (backbone kNN kept together, "
        "chance-corrected), 'silhouette' (backbone, sampled) or "
        "'recipe' (the [evaluation] section's; the others are still listed); docs/selection.md")
    report: bool = Field(True, description="write report.html and its figures into the run folder (docs/report.md)")
    report_embedding: Literal["tsne", "umap"] = Field(
        "tsne", description="the report's 2-D map of the features: scikit-learn's t-SNE (about 3 s for its 2,000 "
        "points) or UMAP (about 10 s in a fresh process, most of it numba compiling)")
    tensorboard: bool = Field(False, description="also log each epoch's scalars to <run folder>/tensorboard")
    max_unreadable: float = Field(
        0.01, ge=0, le=1, description="unreadable images are reported once and skipped; the run stops when more "
        "than this fraction of the dataset is unreadable")
    plugins: list[str] = Field(default_factory=list, description="plugins the recipe needs")
    unlabeled_losses: list[str] = Field(
        default_factory=list, description="loss keys trained on the [unlabeled] dataset each epoch, in a pass before "
        "the one over [data] (CC's STL-10 protocol); required with [unlabeled]")


class OptimizerSection(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scale_batch: int | None = Field(None, ge=1, description="if set, lr *= batch_size / lr_scale_batch")
    lr_mult: dict[str, float] = Field(default_factory=dict, description="parameter-name prefix -> lr multiplier")


class ScheduleSection(_Strict):
    name: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class MomentumSection(_Strict):
    """A momentum (EMA) copy of the backbone and the listed heads, updated after every step."""

    base: float = Field(0.996, ge=0, le=1)
    final: float | None = Field(None, ge=0, le=1, description="cosine increase to this value; None = constant")
    heads: list[str] = Field(default_factory=list, description="heads copied into the momentum network")
    buffers: Literal["copy", "own"] = Field(
        "copy", description="BatchNorm statistics of the momentum network: 'copy' the online network's after every "
        "step, or keep its 'own', updated by its own forward passes (MoCo/BYOL/ProPos reference code)")


class FeaturesSection(_Strict):
    """Train on cached features of a frozen pretrained backbone (docs/pretrained.md).

    The engine extracts, once, the backbone's features of every item (the evaluation view and
    ``augmentations`` rounds of the ``[views]`` training views) into a memory-mapped cache, and the
    heads train on those through an MLP trunk: an epoch costs the heads, not the backbone."""

    cache_dir: str | None = Field(None, description="where the cache lives (a folder per model, weights, data and "
                                  "transform); unset: $CLUSTKIT_CACHE_DIR or ~/.cache/clustkit, then features/")
    augmentations: int = Field(0, ge=0, description="rounds of the [views] training views cached per item, besides "
                               "the evaluation view (each round costs one backbone pass per training view)")
    positives: Literal["neighbours", "augment"] = Field(
        "neighbours", description="'neighbours': the first training view is the item, every other one a random one "
        "of its k nearest neighbours in the frozen feature space (SCAN's and TEMI's positives); 'augment': each "
        "view a random cached augmentation of the item (needs augmentations >= 1)")
    neighbours: int = Field(20, ge=1, description="k of the neighbour views")
    normalize: bool = Field(True, description="L2-normalise the cached features before the trunk")
    trunk: list[int] = Field(default_factory=list, description="hidden widths of the trunk's MLP (Linear, "
                             "BatchNorm, ReLU each)")
    trunk_dim: int = Field(512, ge=0, description="the trunk's output size, what the heads read as backbone "
                           "features; 0 with no hidden layers: the (normalised) cached features themselves")
    batch_size: int = Field(128, ge=1, description="images per backbone pass while extracting")


# Component sections: (recipe key, registry kind, is a table of named instances, required)
COMPONENT_SECTIONS: tuple[tuple[str, str, bool, bool], ...] = (
    ("data", "dataset", False, True),
    ("unlabeled", "dataset", False, False),
    ("backbone", "backbone", False, True),
    ("heads", "head", True, False),
    ("views", "views", False, True),
    ("losses", "loss", True, False),
    ("grouping", "grouper", False, False),
    ("evaluation", "evaluator", False, True),
    ("refine", "refiner", True, False),     # stages run in recipe order after training
)
CORE_SECTIONS: dict[str, type[BaseModel]] = {
    "run": RunSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "momentum": MomentumSection,
    "features": FeaturesSection,
}
DEFAULT_GROUPING = {"name": "kmeans"}
TOP_LEVEL = ["run", "data", "unlabeled", "backbone", "heads", "views", "losses", "grouping", "evaluation", "refine",
             "optimizer", "schedule", "momentum", "features"]


@dataclass
class Recipe:
    """A validated recipe: core sections as models, components as their plugins' config models."""

    path: str
    run: RunSection
    optimizer: OptimizerSection
    schedule: ScheduleSection
    momentum: MomentumSection | None
    data: BaseModel
    backbone: BaseModel
    views: BaseModel
    evaluation: BaseModel
    grouping: BaseModel
    heads: dict[str, BaseModel] = field(default_factory=dict)
    losses: dict[str, BaseModel] = field(default_factory=dict)
    refine: dict[str, BaseModel] = field(default_factory=dict)
    unlabeled: BaseModel | None = None
    features: FeaturesSection | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (every default filled in), as plain TOML-able data."""
        out: dict[str, Any] = {"run": _dump(self.run)}
        for key, _, table, _ in COMPONENT_SECTIONS:
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = {k: _dump(v) for k, v in value.items()} if table else _dump(value)
        out["optimizer"] = _dump(self.optimizer)
        out["schedule"] = _dump(self.schedule)
        if self.momentum is not None:
            out["momentum"] = _dump(self.momentum)
        if self.features is not None:
            out["features"] = _dump(self.features)
        return out

    @property
    def run_name(self) -> str:
        """``run.name``, else the recipe file's stem: what a run's progress, summary and report are titled."""
        return self.run.name or Path(self.path).stem

    def fingerprint(self, ignore: tuple[str, ...]) -> str:
        """A hash of the resolved recipe without the keys in ``ignore`` (a resume compares these;
        the engine passes its ``RESUMABLE_KEYS``)."""
        flat = {k: v for k, v in flatten(self.to_dict()).items() if k not in ignore}
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def components(self) -> list[tuple[str, str, BaseModel]]:
        """(recipe key path, kind, config) of every selected component, in build order."""
        items: list[tuple[str, str, BaseModel]] = []
        for key, kind, table, _ in COMPONENT_SECTIONS:
            value = getattr(self, key)
            if value is None:
                continue
            if table:
                items.extend((f"{key}.{k}", kind, v) for k, v in value.items())
            else:
                items.append((key, kind, value))
        return items


def _dump(model: BaseModel) -> dict[str, Any]:
    return _tomlable(model.model_dump(mode="json", exclude_none=True))


def _tomlable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_tomlable(v) for v in value]
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
