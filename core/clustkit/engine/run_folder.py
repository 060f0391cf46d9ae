"""The run folder a finished (or interrupted) run leaves behind; rank 0 writes, every file atomically.

``recipe.toml`` (fully resolved), ``metrics.jsonl`` (one object per evaluation), ``summary.json``,
``assignments.csv`` (index, cluster, label) and ``checkpoints/last.pt`` (engine.checkpoint).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clustkit.atomic import atomic_write

if TYPE_CHECKING:
    import numpy as np

# The files of a run folder (the bench and the command line read them; no torch import here).
RECIPE = "recipe.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ASSIGNMENTS = "assignments.csv"
CHECKPOINT = Path("checkpoints") / "last.pt"
ERROR_LOG = "error.log"


class RunFolder:
    """Writes the files of one run folder (a folder-less run writes nothing)."""

    def __init__(self, path: Path | None, is_main: bool):
        self.path = path if is_main else None

    def write_recipe(self, text: str) -> None:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path / RECIPE, text)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        if self.path is not None:
            atomic_write(self.path / METRICS, "".join(json.dumps(e) + "\n" for e in history))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.path is not None:
            atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")

    def write_error(self, text: str) -> Path | None:
        """The traceback of a run that failed (the one-paragraph error points here)."""
        if self.path is None:
            return None
        atomic_write(self.path / ERROR_LOG, text)
        return self.path / ERROR_LOG

    def write_assignments(self, clusters: np.ndarray, labels: np.ndarray) -> None:
        """One row per item: index, cluster and (when the dataset has them) the true label."""
        if self.path is None:
            return
        has = bool((labels >= 0).any())
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "cluster", "label"] if has else ["index", "cluster"])
        for i, c in enumerate(clusters.tolist()):
            w.writerow([i, c, int(labels[i])] if has else [i, c])
        atomic_write(self.path / ASSIGNMENTS, buf.getvalue())
