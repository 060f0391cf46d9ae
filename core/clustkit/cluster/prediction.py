"""A clustering of a run's dataset (:class:`Prediction`): what evaluators and refiners return.

A prediction says three things: the cluster of every item; what it was read from (its ``kind`` of
clustering, the feature ``space`` of the online or ``momentum`` network, a ``variant`` for what is
not a feature space, a neighbour ``vote``), from which its one name derives (:attr:`Prediction.name`,
the key of ``summary.json["candidates"]``); and how ``clustkit predict`` places an image the run has
not seen (``rule`` and ``centroids`` in the assignment space).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

import numpy as np

Rule = Literal["argmax", "centroid", "cosine_centroid"]
RULES: tuple[str, ...] = ("argmax", "centroid", "cosine_centroid")


@dataclass(frozen=True)
class Vote:
    """The neighbour vote a clustering ended with: ``rounds`` rounds in which every item took the
    majority cluster of its ``k`` nearest items in ``space`` (of the momentum network when
    ``momentum``); ``changed`` items moved."""

    k: int
    rounds: int
    space: str
    momentum: bool
    changed: int

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "rounds": self.rounds, "space": self.space, "momentum": self.momentum,
                "changed": self.changed}


@dataclass
class Prediction:
    """One cluster id per dataset item (in index order; -1: an unreadable item), and its provenance.

    Fields:

    * ``labels``: int array of N cluster ids.
    * ``kind``: what made it, e.g. ``"argmax"`` (a soft-assignment head), ``"kmeans"`` (the recipe's
      grouper on features), ``"umap"``, ``"iciclegcn_gcn"``; no colon.
    * ``space``: the feature space it read, ``"backbone"`` or a head's name; ``momentum``: of the
      momentum network.
    * ``variant``: set when the clustering is not a reading of one feature space (a second stage's
      stream ``"a"``): it then names the candidate instead of the space.
    * ``vote``: the neighbour vote it ended with (:class:`Vote`), or None.
    * ``rule``: how a new image is placed: ``"argmax"`` of head ``space``; ``"centroid"`` (or
      ``"cosine_centroid"``, on L2-normalised features) the nearest of ``centroids``, each cluster's
      centre in the assignment space (``space``, or the vote's space). Without ``centroids``,
      ``clustkit predict`` uses the mean feature of each cluster of the run's final assignments.
    * ``scores``: each item's confidence (the report shows the most and least confident members).
    * ``extra``: numbers to record in ``summary.json`` (scalars only are copied).
    """

    labels: np.ndarray
    kind: str = "clusters"
    space: str = "backbone"
    momentum: bool = False
    rule: str = "centroid"
    scores: np.ndarray | None = None
    centroids: np.ndarray | None = None
    variant: str | None = None
    vote: Vote | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: InitVar[str | None] = None  # clustkit 0.1's string name: refused with what to write instead

    def __post_init__(self, source: str | None) -> None:
        if source is not None:
            kind, _, rest = source.partition(":")
            hint = f"kind={kind!r}" + (f", space={rest!r}" if rest else "")
            raise TypeError(f"Prediction(source={source!r}): since clustkit 0.2 a prediction's name derives from its "
                            f"fields: write {hint} (and variant='...' for what is not a feature space, such as a "
                            f"second stage's stream); docs/api.md, 'Prediction'.")
        if ":" in self.kind or "/" in self.kind or not self.kind:
            raise ValueError(f"Prediction.kind {self.kind!r} must be a non-empty word without ':' or '/' (e.g. "
                             "'kmeans'); the name 'kind:space' is derived from the fields.")
        if self.rule not in RULES:
            raise ValueError(f"Prediction.rule {self.rule!r} is not one of {', '.join(RULES)}.")

    @property
    def name(self) -> str:
        """``<kind>:[momentum/]<space or variant>[+vote]``: the candidate's key in ``summary.json``."""
        read = self.variant if self.variant is not None else ("momentum/" if self.momentum else "") + self.space
        return f"{self.kind}:{read}" + ("+vote" if self.vote is not None else "")

    @property
    def assign_space(self) -> str:
        """The feature space ``clustkit predict`` reads for a new image (the vote's, after a vote)."""
        return self.vote.space if self.vote is not None else self.space

    @property
    def assign_momentum(self) -> bool:
        return self.vote.momentum if self.vote is not None else self.momentum

    @property
    def space_label(self) -> str:
        """What a candidate's ``summary.json`` row records as its ``space``: the network space it is
        assigned in, or its ``kind`` when it has a ``variant`` (all streams of one second stage)."""
        if self.variant is not None:
            return self.kind
        return ("momentum/" if self.assign_momentum else "") + self.assign_space

    def assignment(self) -> dict[str, Any]:
        """How the run places new images (saved with the final checkpoint for ``clustkit predict``)."""
        return {"rule": self.rule, "space": self.assign_space, "momentum": self.assign_momentum,
                "centroids": self.centroids}
