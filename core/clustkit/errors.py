"""Errors the command line prints as one paragraph, without a traceback.

Exit codes: 2 bad input (a recipe, an option, a file, a damaged run folder), 3 a run that diverged,
4 a plugin's code that failed; a traceback and exit code 1 is a bug in clustkit itself.
"""

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


class PluginError(UserError):
    """A plugin's code failed or broke its contract (a factory that does not import, an exception in a
    loss, a method with the wrong signature): one paragraph naming the plugin, the component, the
    recipe key and the plugin's file and line (exit code 4, so it is told apart from bad input).

    ``detail`` holds the full traceback text when there is one; the run writes it to its folder."""

    exit_code = 4

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail
