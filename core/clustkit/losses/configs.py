"""Recipe models of the two contrast losses (pydantic only: plugins import them to register).

CC registers them as ``instance_contrast`` / ``cluster_contrast``; SACC, DCHL and IcicleGCN
register the same models (SACC with its own default pairs) under their own names.
"""

from __future__ import annotations

from pydantic import Field

from clustkit.plugin_system.registry import HeadRef, LossConfig, Pair


class PairLossConfig(LossConfig):
    """A loss summed over pairs of views of one head (``PairLoss``)."""

    head: HeadRef = Field("instance", description="the head whose outputs are contrasted")
    pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")], min_length=1,
                              description="view pairs the loss is summed over")


class InstanceContrastConfig(PairLossConfig):
    """NT-Xent between the views of each pair (CC's instance-level contrast)."""

    temperature: float = Field(0.5, gt=0, description="tau_I (CC: 0.5)")


class ClusterContrastConfig(PairLossConfig):
    """Contrast of the soft-assignment columns of each pair, plus log K - H(p) per view (CC)."""

    head: HeadRef = Field("cluster", description="a softmax (cluster) head")
    temperature: float = Field(1.0, gt=0, description="tau_C (CC: 1.0)")
    entropy_weight: float = Field(1.0, ge=0, description="weight of log K - H(p) per view")
