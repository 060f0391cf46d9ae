"""A recipe as a command or a library call names it, loaded against the plugins installed here: the one
place that turns a RECIPE argument and ``--set`` overrides into a validated recipe for a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clustkit.recipe.loading import load
from clustkit.recipe.schema import Recipe
from clustkit.recipe.shipped import resolve_recipe

if TYPE_CHECKING:  # the plugin manager (pluggy, entry points) is imported only when a recipe is loaded
    from clustkit.plugin_system.manager import PluginSet


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> tuple[Recipe, PluginSet]:
    """The validated recipe (``overrides`` applied, ``run.plugins`` checked to be installed) and the installed
    plugins it was checked against. ``recipe``: a file, or a shipped recipe's name (``resolve_recipe``)."""
    from clustkit.plugin_system.manager import get_plugins

    plugins = get_plugins()
    path = resolve_recipe(recipe)
    return load(path, plugins.registry, list(overrides), installed_plugins=list(plugins.info)), plugins
