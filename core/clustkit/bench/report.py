"""Aggregate a bench's runs per cell and write results.{json,csv,md}, runs.csv and results.png."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from clustkit.atomic import atomic_write

# (key, header, digits): the per-cell statistics, in table order
METRICS: list[tuple[str, str, int]] = [
    ("acc", "ACC", 3),
    ("nmi", "NMI", 3),
    ("ari", "ARI", 3),
    ("size_entropy", "size entropy", 3),   # label-free: help choose K (docs/report.md)
    ("n_empty", "empty", 1),
    ("silhouette", "silhouette", 3),
    ("wall_s", "wall s", 1),
    ("peak_rss_mb", "peak RSS MB", 0),
    ("peak_gpu_mb", "peak GPU MB", 0),
]
OK = ("done", "resumed", "cached")


def run_value(run: dict[str, Any], key: str) -> float | None:
    """A run's number: metrics and wall time from summary.json, memory from resources.json."""
    src = run.get("summary") or {}
    if key.startswith("peak_"):
        src = run.get("resources") or {}
    v = src.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add n_ok / n_failed / n_pending, per-metric statistics and plugin versions to each cell."""
    for cell in cells:
        runs = cell["runs"]
        ok = [r for r in runs if r["status"] in OK]
        cell["n_ok"] = len(ok)
        cell["n_failed"] = sum(r["status"] == "failed" for r in runs)
        cell["n_pending"] = sum(r["status"] == "pending" for r in runs)
        cell["metrics"] = {}
        for key, _, _ in METRICS:
            vals = [v for v in (run_value(r, key) for r in ok) if v is not None]
            if vals or key != "peak_gpu_mb":
                cell["metrics"][key] = stats(vals)
        versions: dict[str, set[str]] = {}
        for r in ok:
            for name, ver in ((r.get("summary") or {}).get("plugins") or {}).items():
                versions.setdefault(name, set()).add(str(ver))
        if versions:
            cell["plugins"] = {n: "|".join(sorted(v)) for n, v in sorted(versions.items())}
        cell["warnings"] = sorted({w for r in ok for w in (r.get("summary") or {}).get("warnings", [])})
        by_error: dict[str, list[str]] = {}
        for r in runs:
            if r["status"] == "failed":
                by_error.setdefault(str(r["error"]), []).append(str(r["seed"]))
        cell["errors"] = [f"seed{'s' if len(s) > 1 else ''} {', '.join(s)}: {e}" for e, s in by_error.items()]
    return cells


def fmt(stat: dict[str, Any] | None, digits: int) -> str:
    if not stat or stat["mean"] is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std']:.{digits}f}"
    return text


def _columns(cells: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [m for m in METRICS if any(m[0] in c["metrics"] for c in cells)]


def runs_text(cell: dict[str, Any]) -> str:
    n = len(cell["runs"])
    text = f"{cell['n_ok']}/{n}"
    if cell["n_failed"]:
        text += f" ({cell['n_failed']} failed)"
    if cell["n_pending"]:
        text += f" ({cell['n_pending']} pending)"
    return text


def write_csv(path: Path, cells: list[dict[str, Any]], axes: list[str]) -> None:
    cols = _columns(cells)
    header = ["cell", "recipe", *axes, "n_ok", "n_failed", "n_pending"]
    for key, _, _ in cols:
        header += [f"{key}_mean", f"{key}_std"]
    header += ["overrides", "plugins", "errors"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for c in cells:
        row: list[Any] = [c["id"], c["recipe"], *[c["axes"].get(a, "") for a in axes], c["n_ok"], c["n_failed"],
                          c["n_pending"]]
        for key, _, _ in cols:
            s = c["metrics"].get(key) or {}
            row += ["" if s.get("mean") is None else s["mean"], "" if s.get("std") is None else s["std"]]
        row += [" ".join(c["overrides"]), " ".join(f"{k}={v}" for k, v in c.get("plugins", {}).items()),
                " | ".join(c["errors"])]
        w.writerow(row)
    atomic_write(path, buf.getvalue())


def write_runs_csv(path: Path, cells: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = [k for k, _, _ in METRICS]
    w.writerow(["cell", "seed", "status", *keys, "epochs", "device", "dir", "error"])
    for c in cells:
        for r in c["runs"]:
            s = r.get("summary") or {}
            vals = [run_value(r, k) for k in keys]
            w.writerow([c["id"], r["seed"], r["status"], *["" if v is None else v for v in vals], s.get("epochs", ""),
                        s.get("device", ""), r["dir"], r.get("error") or ""])
    atomic_write(path, buf.getvalue())


def _how(meta: dict[str, Any]) -> str:
    """Where the runs ran: ``mode subprocess, jobs 2``, or ``executor slurm (partition gpu, ...)``."""
    ex = meta.get("executor") or {"name": "local"}
    if ex["name"] == "local":
        return f"mode {meta['mode']}, jobs {meta['jobs']}"
    settings = ", ".join(f"{k} {v}" for k, v in ex.get("settings", {}).items() if v not in (None, {}))
    return f"executor {ex['name']} ({settings})" + (f", jobs {meta['jobs']}" if meta.get("jobs") else "")


PUBLISHED = [("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI")]


def published_lines(cells: list[dict[str, Any]]) -> list[str]:
    """The cells whose recipe entry names a published figure, measured beside published."""
    shown = [c for c in cells if c.get("published")]
    if not shown:
        return []
    head = " | ".join(f"{h} | published {h}" for _, h in PUBLISHED)
    lines = ["", "## Beside the published figures", "",
             "The paper's figure as the bench file gives it (`published` in the recipe entry), beside this bench's "
             "mean ± std.", "",
             f"| cell | {head} | published by |", "|---|" + "---:|" * (2 * len(PUBLISHED)) + "---|"]
    for c in shown:
        pub = c["published"]
        row = [f"`{c['id']}`"]
        for key, _ in PUBLISHED:
            row += [fmt(c["metrics"].get(key), 3), "–" if pub.get(key) is None else f"{pub[key]:.3f}"]
        lines.append("| " + " | ".join(row) + f" | {pub['source']} |")
    return lines


def markdown(meta: dict[str, Any], cells: list[dict[str, Any]]) -> str:
    cols = _columns(cells)
    lines = [f"# Bench `{meta['name']}`", ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    lines += [f"- source: `{meta['source']}`; seeds {', '.join(map(str, meta['seeds']))}",
              f"- command: `{meta['command']}`",
              f"- written {meta['created']} on {meta['host']['platform']}, {meta['host']['cpu_count']} CPU cores; "
              f"devices: {', '.join(meta['devices']) or 'n/a'}; {_how(meta)}, "
              f"torch threads per run {meta['threads'] or 'default'}",
              "- mean ± sample std over the seeds that finished; peak RSS is the whole run process "
              "(interpreter, libraries, data, model)",
              ""]
    head = ["cell", "runs ok", *[h for _, h, _ in cols]]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * len(cols)) + "|")
    for c in cells:
        row = [f"`{c['id']}`", runs_text(c), *[fmt(c["metrics"].get(k), d) for k, _, d in cols]]
        lines.append("| " + " | ".join(row) + " |")
    lines += published_lines(cells)
    lines += ["", "## Runs", "", "One row per finished run (the per-seed figures behind the means).", ""]
    lines.append("| cell | seed | " + " | ".join(h for _, h, _ in cols) + " |")
    lines.append("|---|---:|" + "|".join(["---:"] * len(cols)) + "|")
    for c in cells:
        for r in c["runs"]:
            if r["status"] not in OK:
                continue
            vals = [run_value(r, k) for k, _, _ in cols]
            cells_txt = ["–" if v is None else f"{v:.{d}f}" for v, (_, _, d) in zip(vals, cols)]
            lines.append(f"| `{c['id']}` | {r['seed']} | " + " | ".join(cells_txt) + " |")
    lines += ["", "## Cells", ""]
    for c in cells:
        ovs = " ".join(f"`--set {o}`" for o in c["overrides"]) or "(none)"
        plugins = ", ".join(f"{k} {v}" for k, v in c.get("plugins", {}).items()) or "n/a"
        lines.append(f"- `{c['id']}`: `{c['recipe']}` {ovs}; plugins: {plugins}")
    warned = [(c["id"], w) for c in cells for w in c.get("warnings", [])]
    if warned:
        lines += ["", "## Warnings", ""]
        lines += [f"- `{cid}`: {w}" for cid, w in warned]
    failures = [(c["id"], e) for c in cells for e in c["errors"]]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- `{cid}` {err}" for cid, err in failures]
    return "\n".join(lines) + "\n"


def plot(path: Path, title: str, cells: list[dict[str, Any]]) -> None:
    """Grouped bars (mean, std error bars) of ACC/NMI/ARI, and bars of wall time and peak memory, per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["id"] for c in cells]
    n = len(cells)
    width = max(8.0, 0.9 * n + 3)
    fig, axes = plt.subplots(3, 1, figsize=(width, 10), sharex=True, gridspec_kw={"height_ratios": [2, 1, 1]})

    def series(key: str) -> tuple[list[float], list[float]]:
        means, stds = [], []
        for c in cells:
            s = c["metrics"].get(key) or {}
            means.append(s.get("mean") if s.get("mean") is not None else math.nan)
            stds.append(s.get("std") or 0.0)
        return means, stds

    xs = list(range(n))
    bw = 0.26
    for i, (key, label) in enumerate((("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI"))):
        m, s = series(key)
        axes[0].bar([x + (i - 1) * bw for x in xs], m, bw, yerr=s, capsize=3, label=label)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("score")
    axes[0].legend(ncols=3, loc="upper right", fontsize=8)
    axes[0].set_title(title)
    for ax, key, label in ((axes[1], "wall_s", "wall time (s)"), (axes[2], "peak_rss_mb", "peak RSS (MB)")):
        m, s = series(key)
        ax.bar(xs, m, 0.6, yerr=s, capsize=3, color="tab:gray")
        ax.set_ylabel(label)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    axes[2].set_xticks(xs, names, rotation=30 if n > 2 else 0, ha="right" if n > 2 else "center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_all(out: Path, meta: dict[str, Any], cells: list[dict[str, Any]], axes: list[str]) -> None:
    atomic_write(out / "results.json", json.dumps({**meta, "cells": cells}, indent=2, default=str) + "\n")
    write_csv(out / "results.csv", cells, axes)
    write_runs_csv(out / "runs.csv", cells)
    atomic_write(out / "results.md", markdown(meta, cells))
    plot(out / "results.png",
         f"bench {meta['name']}: mean ± std over seeds {', '.join(map(str, meta['seeds']))}", cells)
