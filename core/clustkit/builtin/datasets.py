"""The factory of the built-in datasets (imported only when a run builds one)."""

from __future__ import annotations

from typing import Any

from clustkit import BuildContext
from clustkit.data import ClusterDataset, load_dataset


def build_dataset(cfg: Any, ctx: BuildContext) -> ClusterDataset:
    """Every option of ``cfg`` goes to the loader as it is: its config model (``dataset_configs``)
    holds exactly the options that loader takes, so there is nothing to filter."""
    options = cfg.model_dump(exclude={"name"})
    return load_dataset(cfg.name, **options)
