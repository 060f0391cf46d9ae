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
from clustkit.cli.trained import evaluate, export, predict
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


RECIPE_HELP = "Recipe TOML file, or the name of a shipped recipe such as cc or cifar10/sacc (see `clustkit recipes`)."


def load_recipe(recipe: Path | str, overrides: list[str]) -> tuple[Any, Any]:
    """The validated recipe (``--set`` applied) and the installed plugins it was checked against;
    ``recipe`` is a file or a shipped recipe's name (``resolve_recipe``)."""
    from clustkit.plugin_system.manager import get_plugins
    from clustkit.recipe import load, resolve_recipe

    plugins = get_plugins()
    path = resolve_recipe(recipe)
    return load(path, plugins.registry, overrides, installed_plugins=list(plugins.info)), plugins


def _default_out(recipe: Path) -> Path:
    """``runs/<recipe file's stem>-<time>``: ``clustkit run cc`` and ``run recipes/cc.toml`` both give runs/cc-…"""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    return Path("runs") / f"{recipe.stem}-{run_id or time.strftime('%Y%m%d-%H%M%S')}"


@app.command()
def run(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),  # str: typer's Path would drop the "./" of ./cc
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<recipe>-<time>)."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Train and evaluate a recipe; write recipe.toml, metrics.jsonl, summary.json, assignments.csv."""
    try:
        loaded, plugins = load_recipe(recipe, set_)
        if resume and out is None:  # never guess which run to continue
            raise UserError("--resume needs --out naming the run folder to continue (e.g. --out runs/cc-20261130-2042).")
        out_dir = out or _default_out(Path(loaded.path))
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
        from rich.markup import escape

        shown = {k: summary.get(k) for k in ("method", "dataset", "acc", "nmi", "ari", "n_clusters", "wall_s")}
        Console(soft_wrap=True).print(f"[bold green]done[/bold green] {escape(str(out_dir))}: " + escape(", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())), highlight=False)


@app.command()
def check(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),
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
    show: Optional[str] = typer.Option(None, "--show", metavar="NAME",
                                       help="Show the components of plugin NAME (or the components named NAME): "
                                            "kind, doc and every config key with type, default and description."),
) -> None:
    """List installed plugins, their versions, components and hooks."""
    from clustkit.plugin_system.manager import get_plugins

    ps = get_plugins()
    if show is not None:
        try:
            _show_components(ps, show, as_json)
        except UserError as exc:
            fail(exc)
        return
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


def _show_components(ps: Any, name: str, as_json: bool) -> None:
    """``clustkit plugins --show NAME``: plugin NAME's components, else every component called NAME."""
    from dataclasses import asdict

    from pydantic_core import to_jsonable_python

    from clustkit.plugin_system.registry import config_fields, qualified_name

    plugin = name if name in ps.info else None  # a plugin's name wins over a component's (sacc is both)
    specs = ps.registry.by_plugin(name) if plugin else [s for s in ps.registry.all() if s.name == name]
    if not specs and plugin is None:
        if name in ps.failed:
            raise UserError(f"plugin {name!r} failed to load: {ps.failed[name]}")
        import difflib

        names = sorted({*ps.info, *(s.name for s in ps.registry.all())})
        close = difflib.get_close_matches(name, names, n=5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UserError(f"no plugin or component named {name!r}.{hint} Plugins: {', '.join(ps.info) or '(none)'}; "
                        f"`clustkit plugins` lists every component.")
    comps = []
    for spec in specs:
        entry: dict[str, Any] = {"kind": spec.kind, "name": spec.name, "plugin": spec.plugin, "doc": spec.doc,
                                 "factory": qualified_name(spec.factory), "config": qualified_name(spec.config)}
        try:
            entry["fields"] = [asdict(f) for f in config_fields(spec.config_model())]
        except Exception as exc:  # one broken config must not hide the others
            entry["fields"], entry["error"] = [], f"{type(exc).__name__}: {exc}"
        comps.append(entry)
    if as_json:
        typer.echo(json.dumps({"name": name, "plugin": plugin, "components": to_jsonable_python(comps)}, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if plugin is not None:
        info = ps.info[plugin]
        console.print(f"[bold]plugin {escape(plugin)}[/bold] {escape(info.version or '')} ({escape(info.module)}); "
                      f"hooks: {escape(', '.join(info.hooks))}" + ("" if comps else "; no components"), highlight=False)
    for c in comps:
        title = f"{c['kind']} {c['name']}" + (f": {c['doc']}" if c["doc"] else "")
        caption = " · ".join(p for p in ("" if plugin else f"plugin {c['plugin']}", f"config {c['config']}",
                                         f"factory {c['factory']}", c.get("error", "")) if p)
        table = Table(title=escape(title), caption=escape(caption), title_justify="left", caption_justify="left")
        for col in ("key", "type", "default", "description"):
            table.add_column(col, overflow="fold")
        for f in c["fields"]:
            default = "required" if f["required"] else _toml_value(f["default"])
            table.add_row(*(escape(str(v)) for v in (f["key"], f["type"], default, f["description"])))
        console.print(table)


def _toml_value(value: Any) -> str:
    """A default as it is written in a recipe (JSON's scalars and lists are TOML's; None is ``unset``)."""
    from pydantic_core import to_jsonable_python

    if value is None:
        return "unset"
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


@app.command()
def recipes(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the recipes shipped with clustkit; run one by name: clustkit run cc."""
    from clustkit.recipe.shipped import shipped_recipes, shipped_root

    found = shipped_recipes()
    if as_json:
        typer.echo(json.dumps({"root": str(shipped_root() or ""), "recipes": [
            {"name": r.name, "dataset": r.dataset, "description": r.description, "path": str(r.path)}
            for r in found.values()]}, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="shipped recipes", caption=escape(f"clustkit run NAME · clustkit check NAME --show · files in "
                                                           f"{shipped_root() or '(none installed)'}"))
    for col in ("name", "dataset", "description"):
        table.add_column(col, overflow="fold")
    for r in found.values():
        table.add_row(escape(r.name), escape(r.dataset or "-"), escape(r.description))
    Console().print(table)


@app.command()
def views(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),
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
app.command()(predict)
app.command()(evaluate)
app.command()(export)


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
