"""IcicleGCN: deep image clustering with contrastive learning and multi-scale GCNs
(Xu, Huang, Wang, Lai, Pattern Recognition 146 (2024) 110065; docs/methods/iciclegcn.md).

Stage 1 runs in the engine's training loop: the instance similarity module (ISM: CC's
instance head with CC's NT-Xent) and the JC-SLIM auto-encoder head (``autoencoder``), whose
softmax code gets CC's cluster contrast (CCS) and whose decoder gets a reconstruction loss
(re). Each view's code comes from that view's features (the reference computes the second
view's from the first view's, which makes the positives trivial). Stage 2 is a ``[refine.<id>]``
stage (``refiner``, networks in ``gcn``) that runs after training: it extracts the backbone
features once, builds two sparse kNN graphs, trains the two GCN streams fused layer by layer
with the auto-encoder (DEC-style targets) and supplies the final labels.
Paper-vs-code choices are listed in docs/plugins/iciclegcn.md.

Only pydantic here: listing plugins never imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from clustkit import (
    ClusterContrastConfig,
    ComponentConfig,
    HeadRef,
    InstanceContrastConfig,
    LossConfig,
    Registry,
    View,
    hookimpl,
)
from clustkit.nn.configs import ProjectionHeadConfig

F = "clustkit_iciclegcn."


class AutoencoderConfig(ComponentConfig):
    hidden: list[int] = Field(default_factory=lambda: [500, 500, 2000], min_length=1,
                              description="encoder widths d→500→500→2000→K (decoder mirrored); paper and code")


class ReconLossConfig(LossConfig):
    head: HeadRef = Field("cluster", description="the JC-SLIM auto-encoder head")
    views: list[View] = Field(default_factory=lambda: ["weak1", "weak2"], min_length=1,
                             description="(1/|views|·N) Σ_views ‖Z − Ẑ‖²_F; the paper uses both views")
    detach_target: bool = Field(False, description="stop the gradient through the target Z (the paper does not)")


class GCNRefinerConfig(ComponentConfig):
    ae_head: HeadRef = Field("cluster", description="recipe key of the JC-SLIM head that initialises the trident's AE")
    k_a: int = Field(1, ge=1, description="neighbours of graph a (paper 1, code 1)")
    k_b: int = Field(10, ge=1, description="neighbours of graph b (paper 10, code 15)")
    normalization: Literal["sym", "row"] = Field(
        "sym", description="D^-1/2 (A+I) D^-1/2 (paper) or D^-1 (A+I) (code, as SDCN)")
    knn_backend: Literal["auto", "faiss", "torch"] = "auto"
    sigma: float = Field(
        0.4, ge=0, le=1, description="weight of the stream's own previous GCN layer (paper 0.4, code 0.5)")
    gamma: float = Field(
        0.2, ge=0, le=1, description="weight of the other stream's previous GCN layer (paper and code 0.2)")
    ae_weight: float | None = Field(
        None, ge=0, description="weight of the AE layer; None = 1 - sigma - gamma (paper 0.4); the code uses 0.5")
    share_weights: bool = Field(False, description="one set of GCN weights for both streams (code) or two (paper)")
    iterations: int = Field(1000, ge=0, description="full-batch iterations (paper/code 1000)")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (paper/code 1e-4)")
    weight_decay: float = Field(0.0, ge=0)
    alpha: float = Field(0.1, ge=0, description="weight of KL(P‖Q) (code 0.1)")
    beta: float = Field(0.05, ge=0, description="weight of KL(P‖G_a) (code 0.05)")
    eta: float = Field(0.01, ge=0, description="weight of KL(P‖G_b) (code 0.01)")
    re_weight: float = Field(1.0, ge=0, description="weight of the AE reconstruction MSE (mgcn_re)")
    student_t_v: float = Field(1.0, gt=0, description="degrees of freedom of the Student-t kernel")
    kmeans_n_init: int = Field(20, ge=1, description="k-means restarts for the initial centres (code 20), "
                               "through the recipe's [grouping]")
    predict: Literal["a", "b", "mean", "q"] = Field(
        "mean", description="final labels: argmax of G_a, G_b, their mean (default), or of the Student-t Q")
    checkpoint_every: int = Field(100, ge=1, description="iterations between stage-2 checkpoints")
    log_every: int = Field(100, ge=0, description="iterations between progress lines (0 = none)")

    @model_validator(mode="after")
    def _weights(self) -> GCNRefinerConfig:
        if self.ae_weight is None and self.sigma + self.gamma > 1 + 1e-9:
            raise ValueError(f"sigma + gamma = {self.sigma + self.gamma} > 1; set ae_weight explicitly")
        return self


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("head", "iciclegcn_ism", "clustkit.nn.heads:build_instance_head", ProjectionHeadConfig,
                 doc="ISM: CC's instance projector (MLP to 128-d, L2-normalised)")
    registry.add("head", "iciclegcn_ae", F + "autoencoder:build_autoencoder", AutoencoderConfig,
                 doc="JC-SLIM auto-encoder d-500-500-2000-K (softmax code) with mirrored decoder")
    registry.add("loss", "iciclegcn_cis", "clustkit.losses.pair:InstanceContrast", InstanceContrastConfig,
                 doc="CIS: NT-Xent on the ISM head (tau 0.5)")
    registry.add("loss", "iciclegcn_ccs", "clustkit.losses.pair:ClusterContrast", ClusterContrastConfig,
                 doc="CCS: cluster contrast on the AE codes' columns, each view's code from its own features")
    registry.add("loss", "iciclegcn_re", F + "autoencoder:ReconLoss", ReconLossConfig,
                 doc="re: (1/2N) sum over both views of |Z - decoder(code)|^2")
    registry.add("refiner", "iciclegcn_gcn", F + "refiner:GCNRefiner", GCNRefinerConfig,
                 doc="stage 2: two kNN graphs (FAISS), two GCN streams fused with the AE, DEC targets; final labels")
