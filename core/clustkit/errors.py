"""Errors a user can fix; the CLI prints them as one paragraph and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (recipe, option, data path), not a bug in clustkit."""

    exit_code = 2


class RecipeError(UserError):
    """An invalid recipe: names the file, the key path and, when known, the allowed values."""

    def __init__(self, file: str | None, key: str | None, message: str, allowed: list[str] | None = None):
        self.file = file
        self.key = key
        self.message = message
        self.allowed = allowed
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"key '{self.key}': " if self.key else ""
        text = f"invalid recipe {where}{key}{self.message}"
        if self.allowed is not None:
            shown = ", ".join(str(a) for a in self.allowed) if self.allowed else "(none installed)"
            text += f" Allowed values: {shown}."
        return text


class RunDiverged(UserError):
    """A loss or a clustering became non-finite: the run stops before writing a checkpoint, so the
    last good one stays resumable (exit code 3, so schedulers can tell it from bad input)."""

    exit_code = 3
