"""Python values written as TOML text: the one writer behind ``--set`` values that bench files and ``--grid``
generate, and the defaults ``clustkit plugins --show`` prints, so that both read back as the value they show."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any


def toml_value(value: Any) -> str:
    """``value`` as an inline TOML value (the right-hand side of ``key = ...`` or ``--set key=...``).

    Tuples, paths, enums and models are written as their JSON form (pydantic's); TOML has no null, so
    ``None`` raises TypeError, like any value that has no TOML form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):  # JSON's string escapes are TOML's, but for DEL, which TOML wants escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if value is not None:
        from pydantic_core import PydanticSerializationError, to_jsonable_python

        try:
            plain = to_jsonable_python(value)
        except PydanticSerializationError:  # no JSON form either
            plain = value
        if type(plain) is not type(value):
            return toml_value(plain)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")
