"""The one formatter of pydantic validation errors, for recipes and bench files alike.

It turns pydantic's location tuple into the key path a user writes (``losses.instance.pairs[1]``),
drops the union-member tags pydantic inserts, and for an unknown key lists the keys allowed at
that place, so that every error names the file, the key and the allowed values.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from clustkit.errors import RecipeError


def _members(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[Any]]:
    """The key path of ``loc`` and the annotations found at its last step."""
    key = ""
    nodes: list[Any] = [model]
    for part in loc:
        models = [n for n in nodes if isinstance(n, type) and issubclass(n, BaseModel)]
        if isinstance(part, str) and any(part in m.model_fields for m in models):
            key += f".{part}" if key else part
            nodes = [a for m in models if part in m.model_fields for a in _members(m.model_fields[part].annotation)]
            continue
        named = [n for n in nodes if getattr(n, "__name__", None) == part or str(n) == part]
        alternatives = [n for n in nodes if n is not type(None)]  # `Model | None` is one model, not a union of tags
        if (isinstance(part, str) and (named or len(alternatives) > 1)
                and not any(typing.get_origin(n) is dict for n in nodes)):
            nodes = named or nodes  # a union member's tag, not a key
            continue
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
        inner = [typing.get_args(n) for n in nodes if typing.get_origin(n) in (list, tuple, dict, set)]
        nodes = [m for args in inner if args for m in _members(args[-1])]
    return key, nodes


def validation_error(file: str, exc: ValidationError, model: type[BaseModel], prefix: str = "",
                     error: type[RecipeError] = RecipeError) -> RecipeError:
    """A :class:`RecipeError` (or ``error``) for the first problem of ``exc``, raised by ``model``
    validating the table at key ``prefix`` of ``file``."""
    err = exc.errors()[0]
    where, _ = _walk(model, tuple(err["loc"]))
    key = ".".join(p for p in (prefix, where) if p).replace(".[", "[")
    allowed: list[str] | None = None
    kind = err["type"]
    if kind == "extra_forbidden":
        _, parents = _walk(model, tuple(err["loc"])[:-1])
        fields = sorted({f for n in parents if isinstance(n, type) and issubclass(n, BaseModel)
                         for f in n.model_fields})
        msg, allowed = "unknown key.", (fields or None)
    elif kind == "missing":
        msg = "is required but missing."
    elif kind in ("literal_error", "enum"):
        expected = str(err.get("ctx", {}).get("expected", ""))
        allowed = [a.strip().strip("'") for a in expected.replace(" or ", ", ").split(",") if a.strip()]
        msg = f"{err.get('input')!r} is not a valid choice."
    elif kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"])).rstrip(".") + "."
    else:
        msg = f"{err['msg']} (got {err.get('input')!r})."
    more = len(exc.errors()) - 1
    if more:
        msg += f" ({more} more problem{'s' if more > 1 else ''} in this section.)"
    return error(file, key or None, msg, allowed)
