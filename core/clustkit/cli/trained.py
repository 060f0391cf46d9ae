"""``clustkit predict``, ``evaluate`` and ``export``: using a trained run folder. Each only reads
the run folder; what it writes goes where ``--out`` says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from clustkit.cli.console import fail
from clustkit.errors import UserError

DATA_HELP = "Override the run's \\[data] (another split or dataset): --set data.split='test' (repeatable)."
RUN_HELP = "A run folder written by `clustkit run`."
DEVICE_HELP = "cpu, cuda, ... (default: the recipe's)."
PREDICTIONS, EXPORT = Path("predictions.csv"), Path("export")  # the defaults of --out
BACKBONE: list[str] = ["backbone"]  # of export --features (typer hands the command a copy)


def _check_out(path: Path, run_dir: Path) -> None:
    """Never write into the run folder itself: a later command must not damage a run."""
    if path.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(f"--out {path} lies inside the run folder {run_dir}; write it elsewhere (the run folder is "
                        "left as the run wrote it).")


def write_table(columns: dict[str, Any], path: Path) -> None:
    """Columns (equal-length lists / arrays) as CSV, or Parquet when ``path`` ends in .parquet."""
    import numpy as np

    from clustkit.atomic import atomic_write

    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"writing {path} needs pyarrow: pip install 'clustkit[parquet]' "
                            "(or use a .csv name).") from None
        arrays = {k: pa.array(list(v) if isinstance(v, np.ndarray) and v.ndim == 2 else v) for k, v in columns.items()}
        atomic_write(path, lambda fh: pq.write_table(pa.table(arrays), fh))
        return
    import csv
    import io

    names, values = [], []
    for k, v in columns.items():
        if isinstance(v, np.ndarray) and v.ndim == 2:  # an embedding: one column per dimension
            names += [f"{k}_{j}" for j in range(v.shape[1])]
            values += [v[:, j] for j in range(v.shape[1])]
        else:
            names.append(k)
            values.append(v)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(names)
    for row in zip(*values):
        w.writerow([_cell(x) for x in row])
    atomic_write(path, buf.getvalue())


def _cell(x: Any) -> Any:
    """A CSV cell: floats to 6 significant digits, NaN (no value: an unreadable file's confidence) empty."""
    if isinstance(x, float) or getattr(x, "dtype", None) in ("float32", "float64"):
        return "" if x != x else f"{x:.6g}"
    return x


def predict(
    run_dir: Annotated[Path, typer.Argument(help=RUN_HELP)],
    images: Annotated[list[Path] | None, typer.Argument(
        help="Image files and/or folders of images (searched recursively); none: the run's dataset, with --set "
             "overrides.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file (or .parquet, with pyarrow).")] = PREDICTIONS,
    embedding: Annotated[bool, typer.Option(
        "--embedding", help="Also write the features the assignment read.")] = False,
    copy_to: Annotated[Path | None, typer.Option(
        "--copy-to", help="Copy each image file into DIR/cluster_<k>/.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help=DATA_HELP + " Without IMAGES: the dataset to predict.")] = None,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
) -> None:
    """Assign clusters to new images with a trained run; writes path, cluster and confidence."""
    set_ = set_ or []
    try:
        from clustkit.trained import load_run

        _check_out(out, run_dir)
        if copy_to is not None:
            _check_out(copy_to, run_dir)
        if images and set_:
            raise UserError("--set changes the run's dataset, which is predicted when no IMAGES are given; "
                            "pass either IMAGES or --set.")
        run = load_run(run_dir, overrides=set_, device=device)
        dataset = run.ctx.dataset
        result = run.predict(images or dataset, embedding=embedding)
        columns: dict[str, Any] = {"path": result.paths} if images or hasattr(dataset, "paths") else \
            {"index": list(range(len(result.clusters)))}
        if not images and dataset.has_labels:
            columns["label"] = [int(v) for v in dataset.labels]
        columns.update({"cluster": result.clusters.tolist(), "confidence": result.confidence.astype(float).tolist()})
        if result.distance is not None:
            columns["distance"] = result.distance.astype(float).tolist()
        if result.embedding is not None:
            columns["embedding"] = result.embedding
        out.parent.mkdir(parents=True, exist_ok=True)
        write_table(columns, out)
        if copy_to is not None:
            if not result.paths or "path" not in columns:
                raise UserError("--copy-to needs image files (IMAGES, or a dataset read from files).")
            for i, (src, k) in enumerate(zip(result.paths, result.clusters.tolist())):
                dest = copy_to / (f"cluster_{k}" if k >= 0 else "unreadable")
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f"{i:06d}_{Path(src).name}")
    except UserError as exc:
        fail(exc)
        return
    unreadable = int((result.clusters < 0).sum())
    typer.echo(f"wrote {out}: {len(result.clusters) - unreadable} images in "
               f"{len(set(result.clusters.tolist()) - {-1})} clusters (rule: {run.rule} on {run.space})"
               + (f"; {unreadable} unreadable file(s): cluster -1, no confidence" if unreadable else "")
               + (f"; copies in {copy_to}" if copy_to else ""))


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help=RUN_HELP)],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s",
        help=DATA_HELP + " Or another evaluation of the same network: --set evaluation.vote_k=10.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the result as JSON to this file.")] = None,
    probes: Annotated[bool, typer.Option(
        "--probes/--no-probes", help="kNN and linear-probe accuracy of the features.")] = True,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
) -> None:
    """Re-evaluate a run's checkpoint with every candidate clustering (and representation probes)."""
    set_ = set_ or []
    try:
        from clustkit.trained import load_run

        if out is not None:
            _check_out(out, run_dir)
        result = load_run(run_dir, overrides=set_, device=device).evaluate(probes=probes)
        if out is not None:
            from clustkit.atomic import atomic_write

            atomic_write(out, json.dumps(result, indent=2) + "\n")
    except UserError as exc:
        fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    rows, selection = result["candidates"], result["selection"]
    keys = [k for k in ("score", "acc", "nmi", "ari", "ami", "size_entropy", "n_empty", "silhouette")
            if any(k in r for r in rows.values())]
    table = Table(title=f"{result['run']} on {result['dataset']} ({result['n_samples']} images)")
    table.add_column("candidate")
    for k in keys:
        table.add_column(k, justify="right")
    for name, r in rows.items():
        mark = (" *" if name == selection["chosen"] else "") + (" (recipe)" if r.get("recipe") else "")
        table.add_row(name + mark, *[f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, "-"))
                                     for k in keys])
    console = Console()
    console.print(table)
    console.print(f"* chosen by run.select = {selection['criterion']!r}, without labels: {selection['reason']}",
                  highlight=False, markup=False)
    for k in ("knn_acc", "linear_probe_acc"):
        if k in result:
            console.print(f"{k} (backbone features, 5-fold): {result[k]:.4f}", highlight=False)


def export(
    run_dir: Annotated[Path, typer.Argument(help=RUN_HELP)],
    features: Annotated[list[str], typer.Option(
        "--features", "-f",
        help="backbone or a head's name (repeatable); soft-assignment heads give the soft assignments.")] = BACKBONE,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into.")] = EXPORT,
    fmt: Annotated[str, typer.Option("--format", help="npy (one array per file) or parquet (one table).")] = "npy",
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help=DATA_HELP)] = None,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
) -> None:
    """Write features (N × D) and soft assignments of the run's dataset, in index order."""
    import numpy as np

    set_ = set_ or []

    try:
        from clustkit.atomic import atomic_write
        from clustkit.trained import load_run

        if fmt not in ("npy", "parquet"):
            raise UserError(f"--format {fmt!r} is not known; allowed values: npy, parquet.")
        _check_out(out, run_dir)
        run = load_run(run_dir, overrides=set_, device=device)
        arrays = {space: run.features(space) for space in features}
        labels = np.asarray(run.ctx.dataset.labels, dtype=np.int64)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if fmt == "npy":
            for space, a in {**arrays, "labels": labels}.items():
                path = out / f"{space}.npy"
                atomic_write(path, lambda fh, a=a: np.save(fh, a))
                written.append(f"{path.name} {tuple(a.shape)}")
        else:
            path = out / "features.parquet"
            write_table({"index": np.arange(len(labels)).tolist(), "label": labels.tolist(), **arrays}, path)
            written.append(f"{path.name} ({len(labels)} rows: index, label, {', '.join(arrays)})")
    except UserError as exc:
        fail(exc)
        return
    typer.echo(f"wrote {out}: " + ", ".join(written))
