"""The ``clustkit`` command line (typer + rich). Imports torch only inside commands that train."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from clustkit import __version__
from clustkit.cli.bench import THREADS_HELP, bench
from clustkit.cli.console import fail, print_error
from clustkit.cli.trained import evaluate, export, predict
from clustkit.engine.run_folder import CHECKPOINT
from clustkit.errors import UserError
from clustkit.recipe import load_recipe  # also clustkit.cli.app.load_recipe, for older callers

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="clustkit: deep image clustering with contrastive learning, "
                       "built from plugins and TOML recipes.")

SET_HELP = "Override a recipe key: --set optimizer.lr=1e-3 (repeatable; values are TOML)."
RECIPE_HELP = "Recipe TOML file, or the name of a shipped recipe such as cc or cifar10/sacc (see `clustkit recipes`)."
VIEWS_PNG = Path("views.png")  # the default of views --out


def _default_out(recipe: Path) -> Path:
    """``runs/<recipe file's stem>-<time>``: ``clustkit run cc`` and ``run recipes/cc.toml`` both give runs/cc-…"""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    return Path("runs") / f"{recipe.stem}-{run_id or time.strftime('%Y%m%d-%H%M%S')}"


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help=RECIPE_HELP)],  # str: typer's Path would drop the "./" of ./cc
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<recipe>-<time>).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help=SET_HELP)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, help=THREADS_HELP)] = 0,
) -> None:
    """Train and evaluate a recipe; write recipe.toml, metrics.jsonl, summary.json, assignments.csv."""
    try:
        loaded, plugins = load_recipe(recipe, set_ or [])
        if resume and out is None:  # never guess which run to continue
            raise UserError("--resume needs --out naming the run folder to continue "
                            "(e.g. --out runs/cc-20261130-2042).")
        out_dir = out or _default_out(Path(loaded.path))
        if not resume and (out_dir / CHECKPOINT).exists():
            raise UserError(f"{out_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
                            f"or choose another --out.")
        summary = _execute(loaded, plugins, out_dir, resume, threads)
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


def _execute(loaded: Any, plugins: Any, out_dir: Path, resume: bool, threads: int) -> dict[str, Any]:
    """Run the recipe with ``threads`` torch CPU threads (0: as they are), restored afterwards: an in-process
    caller (a test, a notebook through CliRunner) keeps its own setting."""
    import torch

    from clustkit.engine.run import Run

    before = torch.get_num_threads()
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        return Run(loaded, plugins, out_dir).execute(resume=resume)
    finally:
        torch.set_num_threads(before)


@app.command()
def check(
    recipe: Annotated[str, typer.Argument(help=RECIPE_HELP)],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help=SET_HELP)] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the fully resolved recipe.")] = False,
) -> None:
    """Validate a recipe without training."""
    try:
        loaded, installed = load_recipe(recipe, set_ or [])
        for _, kind, cfg in loaded.components:  # a factory string that does not import fails here, not in `run`
            installed.registry.get(kind, cfg.name).factory_callable()
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
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    show: Annotated[str | None, typer.Option("--show", metavar="NAME",
                                             help="Show the components of plugin NAME (or the components named NAME): "
                                                  "kind, doc and every config key with type, default and "
                                                  "description.")] = None,
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
        except Exception as exc:
            entry["fields"], entry["error"] = [], f"{type(exc).__name__}: {exc}"
        problem = spec.factory_problem()
        if problem is not None:
            entry["error"] = "; ".join(p for p in (entry.get("error"),
                                                   f"{problem} (registered at {spec.shown_where()})") if p)
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
            default = "required" if f["required"] else _default_text(f["default"])
            table.add_row(*(escape(str(v)) for v in (f["key"], f["type"], default, f["description"])))
        console.print(table)


def _default_text(value: Any) -> str:
    """A default as it is written in a recipe; ``unset`` for None (TOML has no null), and Python's text for
    what TOML cannot write (a None inside a list), so that one odd default never hides the table."""
    from clustkit.recipe import toml_value

    if value is None:
        return "unset"
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


@app.command()
def recipes(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
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
    recipe: Annotated[str, typer.Argument(help=RECIPE_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = VIEWS_PNG,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 8,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help=SET_HELP)] = None,
) -> None:
    """Save a grid of the recipe's training views (row 1: the images, then one row per view)."""
    try:
        from clustkit.cli.viewgrid import save_view_grid

        path = save_view_grid(str(recipe), set_ or [], str(out), n)
    except UserError as exc:
        fail(exc)
        return
    typer.echo(f"wrote {path}")


app.command()(bench)
app.command()(predict)
app.command()(evaluate)
app.command()(export)


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False) -> None:
    if version:
        typer.echo(f"clustkit {__version__}")
        raise typer.Exit()


def main() -> None:
    """Console entry point."""
    try:
        app()
    except UserError as exc:  # errors raised outside a command body
        print_error(str(exc))
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
