"""Recipes: the TOML schema (``schema``), reading and validating a file (``loading``), loading one against the
installed plugins (``installed``), the one formatter of validation errors shared with bench files
(``errors``), the one writer of values as TOML text (``toml_text``), and the recipes shipped with clustkit
with the rule that turns a RECIPE argument into a file (``shipped``)."""

from clustkit.recipe.installed import load_recipe
from clustkit.recipe.loading import apply_overrides, dumps, load, parse_override, read_toml, validate
from clustkit.recipe.schema import Recipe
from clustkit.recipe.shipped import resolve_recipe, shipped_recipes
from clustkit.recipe.toml_text import toml_value

__all__ = ["Recipe", "apply_overrides", "dumps", "load", "load_recipe", "parse_override", "read_toml",
           "resolve_recipe", "shipped_recipes", "toml_value", "validate"]
