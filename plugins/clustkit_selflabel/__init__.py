"""Self-labelling: a refinement stage any method can end with (docs/plugins/selflabel.md).

In the spirit of SCAN's self-labelling step (Van Gansbeke et al., ECCV 2020) and SPICE's reliable
pseudo-labels (Niu et al., TIP 2022). Start from the run's current clustering. Take the most
confident members of each cluster (the same number per cluster, so large clusters do not crowd
out small ones). Then train the backbone and a new soft-assignment head with cross-entropy on
those pseudo-labels, on the recipe's strongest training view. Every ``reselect_every`` steps,
re-select the confident members from the head's own predictions.

It runs as a ``[refine.<id>]`` stage after training, so it works after CC, SACC, DCHL, DigPro
(whose clusters come from k-means: the stage attaches the head they lack) and after IcicleGCN's
GCN stage (``[refine.gcn]`` first, then ``[refine.selflabel]``).

Only pydantic here: listing plugins never imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clustkit import ComponentConfig, Registry, View, hookimpl


class SelfLabelConfig(ComponentConfig):
    head: str = Field("selflabel", min_length=1,
                      description="name of the soft-assignment head the stage adds to the network")
    hidden: list[int] = Field(default_factory=list, description="hidden widths of that head (none: linear)")
    start: Literal["selected", "previous"] = Field(
        "selected", description="the clustering to start from: the run's label-free choice among its candidates "
                                "at the end of training (run.select), or the previous stage's / recipe's evaluation")
    steps: int = Field(300, ge=0, description="optimizer steps of the stage")
    reselect_every: int = Field(100, ge=1, description="steps between re-selections of the confident samples")
    ratio: float = Field(0.5, gt=0, le=1, description="confident samples kept per cluster: ratio × N / K, the "
                                                      "most confident first")
    threshold: float = Field(0.5, ge=0, le=1, description="after the first selection, a sample also needs this "
                                                           "much probability of its cluster under the head")
    view: View | None = Field(None, description="training view of the recipe's [views] to train on; default "
                                               "'strong' when the generator makes one, else its first view")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the new head")
    weight_decay: float = Field(1e-4, ge=0)
    backbone_lr_mult: float = Field(0.1, ge=0, description="lr multiplier of the backbone (0 freezes it); the "
                                                           "default 0.1 gives it SCAN's self-labelling lr, 1e-4")
    balance: bool = Field(True, description="weight the cross-entropy by inverse pseudo-label frequency (SCAN)")
    output: Literal["head", "evaluation"] = Field(
        "head", description="the stage's clustering: its head's argmax, or the recipe's [evaluation] run again on the "
                            "retrained network (e.g. UMAP + GMM on the backbone; a momentum network is set to the "
                            "retrained one first); the other stays a candidate")
    log_every: int = Field(100, ge=0, description="steps between progress lines (0 = none)")


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("refiner", "selflabel", "clustkit_selflabel.refiner:SelfLabelRefiner", SelfLabelConfig,
                 doc="self-labelling on confident, per-cluster balanced pseudo-labels with strong views (SCAN/SPICE)")
