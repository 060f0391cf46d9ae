"""The error of a bench file or of a bench option (``--grid``, ``--seeds``, ``--executor-option``)."""

from __future__ import annotations

from clustkit.errors import RecipeError


class BenchFileError(RecipeError):
    """An invalid bench file or ``--grid``/``--seeds`` option: names the file, key and allowed values."""

    def render(self) -> str:
        text = super().render()
        return text.replace("invalid recipe ", "invalid bench ", 1)
