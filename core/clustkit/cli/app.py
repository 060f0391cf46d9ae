"""The ``clustkit`` command line (typer + rich). Imports torch only inside commands that train."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from clustkit import __version__
from clustkit.bench.command import bench
from clustkit.engine.run_folder import CHECKPOINT
from clustkit.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="clustkit: deep image clustering with contrastive learning, built from plugins and TOML recipes.")

SET_HELP = "Override a recipe key: --set optimizer.lr=1e-3 (repeatable; values are TOML)."


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)


def fail(exc: UserError) -> None:
    from rich.markup import escape

    _err(escape(str(exc)))
    raise typer.Exit(exc.exit_code)


def load_recipe(recipe: Path | str, overrides: list[str]) -> tuple[Any, Any]:
    """The validated recipe (``--set`` applied) and the installed plugins it was checked against."""
    from clustkit.plugin_system.manager import get_plugins
    from clustkit.recipe import load

    plugins = get_plugins()
    return load(recipe, plugins.registry, overrides, installed_plugins=list(plugins.info)), plugins


def _default_out(recipe: Path, resume: bool) -> Path:
    runs = Path("runs")
    stem = recipe.stem
    if resume:
        candidates = sorted((p for p in runs.glob(f"{stem}-*") if (p / CHECKPOINT).exists()),
                            key=lambda p: p.stat().st_mtime)
        if candidates:
            return candidates[-1]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    return runs / f"{stem}-{run_id or time.strftime('%Y%m%d-%H%M%S')}"


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<recipe>-<time>)."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Train and evaluate a recipe; write recipe.toml, metrics.jsonl, summary.json, assignments.csv."""
    try:
        loaded, plugins = load_recipe(recipe, set_)
        out_dir = out or _default_out(recipe, resume)
        if not resume and (out_dir / CHECKPOINT).exists():
            raise UserError(f"{out_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
                            f"or choose another --out.")
        from clustkit.engine.run import Run

        summary = Run(loaded, plugins, out_dir).execute(resume=resume)
    except UserError as exc:
        fail(exc)
        return
    from clustkit import dist

    if dist.is_main():
        from rich.console import Console

        shown = {k: summary[k] for k in ("method", "dataset", "acc", "nmi", "ari", "n_clusters", "wall_s")}
        Console().print(f"[bold green]done[/bold green] {out_dir}: " + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


@app.command()
def check(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    show: bool = typer.Option(False, "--show", help="Print the fully resolved recipe."),
) -> None:
    """Validate a recipe without training."""
    try:
        loaded, plugins = load_recipe(recipe, set_)
    except UserError as exc:
        fail(exc)
        return
    from rich.console import Console

    from clustkit.recipe import dumps

    console = Console()
    if show:
        console.print(dumps(loaded), markup=False, highlight=False)
    parts = [f"{key}={cfg.name}" for key, _, cfg in loaded.components]
    console.print(f"[green]ok[/green] {recipe}: " + ", ".join(parts), highlight=False)


@app.command()
def plugins(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List installed plugins, their versions, components and hooks."""
    from clustkit.plugin_system.manager import get_plugins

    ps = get_plugins()
    rows = []
    for name, info in ps.info.items():
        comps = [{"kind": s.kind, "name": s.name, "doc": s.doc} for s in ps.registry.by_plugin(name)]
        rows.append({"name": name, "version": info.version, "distribution": info.distribution,
                     "module": info.module, "hooks": info.hooks, "components": comps})
    failed = [{"name": n, "error": e} for n, e in ps.failed.items()]
    if as_json:
        typer.echo(json.dumps({"plugins": rows, "failed": failed}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="clustkit plugins")
    for col in ("plugin", "version", "components", "hooks"):
        table.add_column(col)
    for r in rows:
        comps = "\n".join(f"{c['kind']}: {c['name']}" for c in r["components"]) or "-"
        table.add_row(r["name"], r["version"] or "-", comps, ", ".join(r["hooks"]))
    console = Console()
    console.print(table)
    for f in failed:
        console.print(f"[red]failed to load[/red] {f['name']}: {f['error']}")


@app.command()
def views(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    out: Path = typer.Option(Path("views.png"), "--out", "-o", help="PNG file to write."),
    n: int = typer.Option(8, "--n", min=1, help="Number of images."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
) -> None:
    """Save a grid of the recipe's training views (row 1: the images, then one row per view)."""
    try:
        from clustkit.cli.viewgrid import save_view_grid

        path = save_view_grid(str(recipe), set_, str(out), n)
    except UserError as exc:
        fail(exc)
        return
    typer.echo(f"wrote {path}")


app.command()(bench)


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Show the version and exit.")) -> None:
    if version:
        typer.echo(f"clustkit {__version__}")
        raise typer.Exit()


def main() -> None:
    """Console entry point."""
    try:
        app()
    except UserError as exc:  # errors raised outside a command body
        _err(str(exc))
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
