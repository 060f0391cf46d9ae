"""Recipes: the TOML schema (``schema``), reading and validating a file (``loading``), the one
formatter of validation errors shared with bench files (``errors``), and the recipes shipped with
clustkit with the rule that turns a RECIPE argument into a file (``shipped``)."""

from clustkit.recipe.loading import apply_overrides, dumps, load, parse_override, read_toml, validate
from clustkit.recipe.schema import Recipe
from clustkit.recipe.shipped import resolve_recipe, shipped_recipes

__all__ = ["Recipe", "apply_overrides", "dumps", "load", "parse_override", "read_toml", "resolve_recipe",
           "shipped_recipes", "validate"]
