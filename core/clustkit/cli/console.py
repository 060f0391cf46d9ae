"""How every command reports a user's mistake: one red ``error:`` line on stderr and the error's exit code
(no traceback), shared by the commands of ``app``, ``trained`` and ``bench``."""

from __future__ import annotations

import typer

from clustkit.errors import UserError


def print_error(message: str) -> None:
    """``error: message`` on stderr; ``message`` is rich markup."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)


def fail(exc: UserError) -> None:
    """End the command with ``exc``'s message and exit code."""
    from rich.markup import escape

    print_error(escape(str(exc)))
    raise typer.Exit(exc.exit_code)
