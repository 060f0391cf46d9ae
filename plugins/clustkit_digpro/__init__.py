"""DigPro: dynamic grouping and prototype aggregation (Zhang & Huang, arXiv 2401.13581).

A BYOL-style online/momentum pair (the momentum network is the engine's ``[momentum]``
section) trained with three separately weighted terms (docs/methods/digpro.md):

* ``digpro_byol``: instance alignment 2 - 2·cos(pred(q + ε), k), ε ~ N(0, σ²) after warm-up;
* ``digpro_group``: SMoG dynamic grouping: K momentum-updated group features, the group
  cross-entropy (τ 0.1) against the momentum network's assignment, periodic k-means
  re-initialisation from a memory bank of recent online projections;
* ``digpro_proto``: prototype aggregation: a per-epoch spherical k-means E-step over the whole
  dataset's momentum features, then the prototype contrast (τ 0.5) of the clusters present.

Plus the two heads (``heads``: projector, predictor) and DigPro's SimCLR-style views (the core's
per-image pipeline, normalised). Final labels come from the built-in ``kmeans`` evaluator on the
momentum projector (spherical). This module imports no torch; see docs/plugins/digpro.md for
where the code follows the paper or the reference implementation, and why.
"""

from __future__ import annotations

from pydantic import Field

from clustkit import ComponentConfig, HeadRef, LossConfig, Pair, Registry, hookimpl, with_defaults
from clustkit.nn.configs import PipelineViewsConfig, ProjectionHeadConfig

F = "clustkit_digpro."

#: DigPro: Linear(512→4096) → BN → ReLU → Linear(4096→256).
ProjectorConfig = with_defaults(ProjectionHeadConfig, "ProjectorConfig", hidden=4096, out_dim=256)
#: DigPro's SimCLR views: crop 0.08-1, flip, jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grey 0.2, no blur, normalised.
SimCLRViewsConfig = with_defaults(PipelineViewsConfig, "SimCLRViewsConfig", normalize=True)


class PredictorConfig(ComponentConfig):
    input: HeadRef = Field("projector", description="the head whose output the predictor maps (not the backbone)")
    hidden: int = Field(4096, ge=1, description="Linear(256→4096) → BN → ReLU → Linear(4096→256)")
    out_dim: int | None = Field(None, ge=2, description="default: the input head's out_dim")
    init_std: float = Field(0.01, gt=0, description="linear weights ~ N(0, init_std²), biases 0 (reference)")


class _DigProLossConfig(LossConfig):
    projector: HeadRef = Field("projector", description="online projector head (also in [momentum] heads)")
    views: Pair = ("weak1", "weak2")
    symmetric: bool = Field(True, description="average both directions (view1→view2 and view2→view1)")


class BYOLConfig(_DigProLossConfig):
    predictor: HeadRef = Field("predictor", description="predictor head")
    latent_std: float = Field(0.001, ge=0, description="σ of the latent noise added to q before the predictor")
    noise_after_epochs: float | None = Field(None, ge=0, description="noise only from this epoch on; "
                                             "default: schedule.warmup_epochs (DigPro: 50)")


class GroupConfig(_DigProLossConfig):
    weight: float = 0.3
    predictor: HeadRef = Field("predictor", description="predictor head")
    n_groups: int | None = Field(None, ge=2, description="default: run.n_clusters (DigPro: K)")
    temperature: float = Field(0.1, gt=0)
    beta: float = Field(0.99, ge=0, lt=1, description="group momentum G ← βG + (1-β)·mean(q)")
    bank_size: int = Field(2560, ge=2, description="memory bank of normalised online projections")
    reset_every: int | None = Field(None, ge=1, description="k-means re-initialisation period in iterations; "
                                    "default: n_groups (DigPro)")
    reset_spherical: bool = Field(False, description="spherical k-means for the reset (reference: Euclidean)")
    reset_n_init: int | None = Field(None, ge=1, description="k-means restarts for the reset; default: the "
                                     "[grouping] section's (reference: sklearn KMeans' default, one k-means++ "
                                     "run since scikit-learn 1.4)")
    grad_through_groups: bool = Field(True, description="the updated groups keep the (1-β)·mean(q) gradient "
                                      "path, as lightly's update (false: groups are constants)")
    double_ema: bool = Field(False, description="the reference's extra EMA step per non-reset iteration")
    double_ema_momentum: float = Field(0.99, ge=0, le=1)


class ProtoConfig(_DigProLossConfig):
    weight: float = 0.1
    temperature: float = Field(0.5, gt=0)
    start_epoch: float | None = Field(None, ge=0, description="first (0-based) epoch with the term; "
                                      "default: schedule.warmup_epochs (DigPro: after 50)")
    reassign_every: int = Field(1, ge=1, description="epochs between E-steps (whole-dataset k-means)")
    n_clusters: int | None = Field(None, ge=2, description="default: run.n_clusters")
    absent_logit: float | None = Field(None, description="logit of absent clusters as negatives; "
                                       "none = excluded exactly (reference: -10)")


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("head", "digpro_projector", F + "heads:build_projector", ProjectorConfig,
                 doc="DigPro projector: Linear → BN → ReLU → Linear (256-d)")
    registry.add("head", "digpro_predictor", F + "heads:build_predictor", PredictorConfig,
                 doc="DigPro predictor on the projector output (lr ×10 via optimizer.lr_mult)")
    registry.add("views", "digpro_simclr", "clustkit.nn.views:PipelineViews", SimCLRViewsConfig,
                 doc="DigPro's SimCLR views: crop 0.08-1, flip, jitter 0.4/0.4/0.4/0.1, grey 0.2, normalised")
    registry.add("loss", "digpro_byol", F + "losses:BYOLLoss", BYOLConfig,
                 doc="BYOL alignment 2-2cos(pred(q+eps), k) with latent noise after warm-up")
    registry.add("loss", "digpro_group", F + "losses:GroupLoss", GroupConfig,
                 doc="SMoG dynamic grouping: momentum groups, CE (tau 0.1), bank k-means resets")
    registry.add("loss", "digpro_proto", F + "losses:ProtoLoss", ProtoConfig,
                 doc="per-epoch spherical k-means E-step + prototype contrast (tau 0.5)")
