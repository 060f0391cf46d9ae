"""Recipes: the TOML schema (``schema``), reading and validating a file (``loading``), and the one
formatter of validation errors shared with bench files (``errors``)."""

from clustkit.recipe.loading import apply_overrides, dumps, load, parse_override, read_toml, validate
from clustkit.recipe.schema import Recipe

__all__ = ["Recipe", "apply_overrides", "dumps", "load", "parse_override", "read_toml", "validate"]
