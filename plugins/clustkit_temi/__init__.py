"""TEMI: teacher–student clustering heads on a pretrained model's features (Adaloglou et al., BMVC 2023).

The leader of the pretrained-feature track, beside the five from-scratch methods: several
clustering heads (``temi_heads``) on frozen features, each a student trained against its momentum
teacher (the engine's ``[momentum]``) with TEMI's loss (``temi``), a weighted pointwise mutual
information between the two heads' distributions on an item and one of its nearest neighbours in
the frozen feature space (``[features] positives = "neighbours"``). The head with the lowest loss
over the last epoch gives the clusters, chosen without labels. Written from the paper; the loss,
its defaults and where it differs from the authors' code are in docs/plugins/temi.md. This module
imports no torch.
"""

from __future__ import annotations

from pydantic import Field

from clustkit import ComponentConfig, HeadRef, LossConfig, Registry, hookimpl

F = "clustkit_temi.heads:"


class TemiHeadsConfig(ComponentConfig):
    """``n_heads`` independent heads, each MLP → L2-normalised bottleneck → Linear to K logits."""

    n_heads: int = Field(16, ge=1, description="independent heads trained side by side (TEMI: 16)")
    hidden: int = Field(512, ge=1, description="hidden width of each head's MLP")
    layers: int = Field(2, ge=1, description="linear layers before the bottleneck (GELU between them)")
    bottleneck: int = Field(256, ge=2, description="L2-normalised bottleneck before the last linear layer")


class TemiLossConfig(LossConfig):
    """TEMI's loss over every ordered pair of distinct training views (student on one, teacher on the other)."""

    head: HeadRef = Field("temi", description="the temi_heads head (also in [momentum] heads: its teacher)")
    beta: float = Field(0.6, gt=0, le=1, description="β of the weighted PMI: (q_s·q_t)^β / p̃ (TEMI: 0.6)")
    student_temperature: float = Field(0.1, gt=0, description="softmax temperature of the student heads")
    teacher_temperature: float = Field(0.1, gt=0, description="softmax temperature of the teacher heads")
    probs_momentum: float = Field(0.9, ge=0, lt=1, description="p̃ ← m·p̃ + (1-m)·mean teacher distribution")


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("head", "temi_heads", F + "build_temi_heads", TemiHeadsConfig,
                 doc="TEMI's heads: H MLP heads to K logits; the forward pass gives the chosen head's probabilities")
    registry.add("loss", "temi", F + "TemiLoss", TemiLossConfig,
                 doc="TEMI: weighted PMI between student and momentum-teacher heads on neighbour pairs")
