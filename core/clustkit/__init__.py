"""clustkit: deep image clustering with contrastive learning, built from pluggy plugins and TOML recipes.

This module is the public API for plugin authors (docs/api.md): plugins, the built-in one
included, import from here (and from the library modules ``clustkit.nn``, ``clustkit.losses``,
``clustkit.cluster``, ``clustkit.data``, ``clustkit.dist``), never from the engine. Importing
it is cheap (no torch), so that ``clustkit --help`` and ``clustkit plugins`` stay fast: the
names that need torch are imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

from clustkit.errors import PluginError, RecipeError, UserError
from clustkit.losses.configs import ClusterContrastConfig, InstanceContrastConfig, PairLossConfig
from clustkit.plugin_system.hookspecs import hookimpl
from clustkit.plugin_system.interfaces import (
    CandidateSource,
    Evaluator,
    Grouper,
    HeadBuilder,
    Loss,
    PrototypeUpdater,
    Refiner,
    ViewGenerator,
)
from clustkit.plugin_system.registry import (
    ComponentConfig,
    EvaluatorConfig,
    HeadOrBackbone,
    HeadRef,
    LossConfig,
    Pair,
    Registry,
    View,
    with_defaults,
)

try:
    __version__ = importlib.metadata.version("clustkit")  # one version: pyproject.toml's
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    __version__ = "0+unknown"

# name -> module, imported when the name is first used (these modules import torch)
_LAZY = {
    "BuildContext": "clustkit.engine.context",
    "RunContext": "clustkit.engine.context",
    "Prediction": "clustkit.cluster.prediction",
    "Vote": "clustkit.cluster.prediction",
    "StepOutputs": "clustkit.engine.step",
    "ema_update": "clustkit.engine.network",
    "PairLoss": "clustkit.losses.pair",
    "InstanceContrast": "clustkit.losses.pair",
    "ClusterContrast": "clustkit.losses.pair",
    "check_view_pairs": "clustkit.losses.pair",
    "KMeansResult": "clustkit.cluster.kmeans",
    "load_run": "clustkit.trained.loaded",
    "TrainedRun": "clustkit.trained.loaded",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from clustkit.cluster.kmeans import KMeansResult
    from clustkit.cluster.prediction import Prediction, Vote
    from clustkit.engine.context import BuildContext, RunContext
    from clustkit.engine.network import ema_update
    from clustkit.engine.step import StepOutputs
    from clustkit.losses.pair import ClusterContrast, InstanceContrast, PairLoss, check_view_pairs
    from clustkit.trained.loaded import TrainedRun, load_run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clustkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [  # noqa: RUF022 - grouped by use, as docs/api.md is; __dir__ returns the names sorted
    # writing a plugin
    "hookimpl", "Registry", "ComponentConfig", "LossConfig", "EvaluatorConfig", "HeadRef", "HeadOrBackbone", "Pair",
    "View", "with_defaults",
    "RecipeError", "UserError", "PluginError",
    # what components are (typing.Protocol classes)
    "ViewGenerator", "Loss", "Grouper", "Evaluator", "Refiner", "HeadBuilder", "PrototypeUpdater", "CandidateSource",
    # what components receive and return
    "BuildContext", "RunContext", "StepOutputs", "Prediction", "Vote", "KMeansResult",
    # building blocks
    "PairLoss", "PairLossConfig", "InstanceContrast", "InstanceContrastConfig", "ClusterContrast",
    "ClusterContrastConfig", "check_view_pairs", "ema_update",
    # using a trained run
    "load_run", "TrainedRun",
    "__version__",
]
