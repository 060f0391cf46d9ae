"""The recipes shipped with clustkit, and the one rule turning a command's RECIPE argument into a file.

The repository's top-level ``recipes/`` folder is package data: ``clustkit/recipe/shipped`` is a
symlink to it in the source tree, and ``pyproject.toml``'s package-data puts its ``*.toml`` files
into the wheel (setuptools copies through the link), so an installed clustkit has them too. A
shipped recipe is named by its path below ``recipes/`` without ``.toml``: ``cc``, ``cifar10/sacc``,
``mix/sacc_views_dchl_losses``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clustkit.errors import UserError

#: A shipped recipe's name: slash-separated words, no ``.toml``, no leading ``.``, ``/`` or ``~``.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


@dataclass(frozen=True)
class ShippedRecipe:
    name: str  # e.g. "cifar10/sacc"
    path: Path
    description: str  # the first line of the file's header comment ("" without one)
    dataset: str | None  # the [data] name


def shipped_root() -> Path | None:
    """The folder of the shipped recipes (None when this installation has none)."""
    root = resources.files("clustkit.recipe") / "shipped"
    return Path(str(root)) if isinstance(root, Path) and root.is_dir() else None


def _header(text: str) -> str:
    """The first non-empty line of the comment block a recipe starts with."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.lstrip("#").strip():
            return line.lstrip("#").strip()
    return ""


def shipped_recipes() -> dict[str, ShippedRecipe]:
    """Every shipped recipe by name, sorted (top-level recipes first, then by folder)."""
    root = shipped_root()
    if root is None:
        return {}
    found = []
    for path in root.rglob("*.toml"):
        name = path.relative_to(root).with_suffix("").as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            data = tomllib.loads(text).get("data")
            dataset = data.get("name") if isinstance(data, dict) else None
        except tomllib.TOMLDecodeError:
            dataset = None
        found.append(ShippedRecipe(name, path, _header(text), dataset if isinstance(dataset, str) else None))
    found.sort(key=lambda r: (r.name.count("/"), r.name))
    return {r.name: r for r in found}


def is_recipe_name(text: str) -> bool:
    """Whether ``text`` reads as a shipped recipe's name rather than a file path."""
    return bool(_NAME.fullmatch(text)) and not text.endswith(".toml")


def resolve_recipe(ref: str | Path, base: Path | None = None) -> Path:
    """The recipe file a command's RECIPE argument means. An existing file (relative to ``base``, by
    default the working directory) always wins, and any path is returned as given, so paths work
    exactly as before; otherwise a name without ``.toml`` (``cc``, ``cifar10/sacc``) is the shipped
    recipe of that name, and an unknown name is an error listing close matches."""
    text = str(ref)
    local = Path(text).expanduser()
    if base is not None and not local.is_absolute():
        local = Path(os.path.normpath(base / local))
    if local.is_file() or not is_recipe_name(text):
        return local if base is not None else Path(ref)
    shipped = shipped_recipes()
    if text in shipped:
        return shipped[text].path
    raise UserError(unknown_recipe(text, list(shipped)))


def unknown_recipe(name: str, names: list[str]) -> str:
    """The one message for a RECIPE that is neither a file nor a shipped recipe."""
    if not names:
        return (f"no recipe {name!r}: there is no such file, and this installation of clustkit ships no recipes. "
                f"Give the path of a recipe file (e.g. ./my_recipe.toml).")
    stem = name.rsplit("/", 1)[-1]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)  # typos: ccc, cifar10/sac
    close += [n for n in names if n not in close  # a folder (cifar10) or a name's beginning (sacc_views)
              and (n.startswith(f"{name}/") or n.rsplit("/", 1)[-1].startswith(stem))]
    hint = f" Close matches: {', '.join(close[:6])}." if close else ""
    return (f"no recipe {name!r}: there is no such file and no shipped recipe of that name.{hint} "
            f"`clustkit recipes` lists the {len(names)} shipped recipes (run one by name, e.g. `clustkit run "
            f"{names[0]}`); a recipe file is given by its path (e.g. ./my_recipe.toml).")
