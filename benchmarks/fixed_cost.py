"""The fixed cost of a run: everything a `clustkit run` process spends outside its training epochs.

Runs ``clustkit run RECIPE`` in a fresh process (as a user does: the interpreter, the imports and
the plugins are paid for) with timers wrapped around the engine's phases, and prints where the
wall time of the process went: start-up (interpreter and imports up to the command), plugin
loading and recipe validation, building the run (data, network), the training epochs, the
refinement stages and final evaluation, the candidates and the label-free choice, the report,
the rest (final checkpoint, summary, exit). Everything but the epochs is the fixed cost.

    python benchmarks/fixed_cost.py recipes/cc.toml [--set run.epochs=150] [--repeat 3] [--threads 0]

Measure on an idle machine, one run at a time (docs/speed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import json, sys, time
t0, out_path = float(sys.argv[1]), sys.argv[2]
marks = {"start": time.time() - t0}
import functools
import clustkit.recipe.installed as installed
import clustkit.engine.run as run_module
import clustkit.engine.evaluation as evaluation
import clustkit.engine.reporting as reporting
spans = {}

def timed(owner, name, label):
    original = getattr(owner, name)
    @functools.wraps(original)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            spans[label] = spans.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)

timed(installed, "load_recipe", "plugins + recipe")
timed(run_module.Run, "build", "build (data, network)")
timed(run_module.Run, "train", "training epochs")
timed(run_module, "refined", "final evaluation + stages")
timed(run_module, "sample_features", "candidates + choice")
timed(run_module, "choose", "candidates + choice")
timed(run_module, "write_run_report", "report")
import clustkit.cli.app
app = sys.modules["clustkit.cli.app"]  # the package's name `app` is the Typer object
app.load_recipe = installed.load_recipe
marks["imports done"] = time.time() - t0
sys.argv = ["clustkit", *sys.argv[3:]]
try:
    app.app()
except SystemExit as exc:
    code = exc.code
marks["end"] = time.time() - t0
with open(out_path, "w") as fh:
    json.dump({"marks": marks, "spans": spans}, fh)
'''


def measure(recipe: str, overrides: list[str], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "times.json"
        cmd = [sys.executable, "-c", CHILD, repr(time.time()), str(out_json), "run", recipe, "--out",
               str(Path(tmp) / "run"), "--threads", str(threads)]
        for o in overrides:
            cmd += ["--set", o]
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CLUSTKIT_REPORT": "1"})
        wall = time.time() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        data = json.loads(out_json.read_text())
    data["wall"] = wall
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the run (0: PyTorch's default)")
    args = ap.parse_args()
    rows = [measure(args.recipe, args.overrides, args.threads) for _ in range(args.repeat)]
    names = ["start-up (interpreter, imports)", "plugins + recipe", "build (data, network)", "training epochs",
             "final evaluation + stages", "candidates + choice", "report", "the rest (checkpoint, summary, exit)"]
    table: dict[str, list[float]] = {n: [] for n in names}
    for r in rows:
        spans = r["spans"]
        table[names[0]].append(r["marks"]["imports done"])
        for n in names[1:7]:
            table[n].append(spans.get(n, 0.0))
        table[names[7]].append(r["wall"] - r["marks"]["imports done"] - sum(spans.get(n, 0.0) for n in names[1:7]))
    walls = [r["wall"] for r in rows]
    meta = {"recipe": args.recipe, "overrides": args.overrides, "threads": args.threads,
            "host": platform.platform(terse=True), "cpus": os.cpu_count(), "repeat": args.repeat}
    print(f"<!-- {json.dumps(meta)} -->")
    print(f"| phase | seconds (mean of {len(rows)}) | share of the process |")
    print("|---|---:|---:|")
    mean_wall = sum(walls) / len(walls)
    for n in names:
        mean = sum(table[n]) / len(table[n])
        print(f"| {n} | {mean:.2f} | {100 * mean / mean_wall:.1f}% |")
    fixed = mean_wall - sum(table["training epochs"]) / len(rows)
    exit_s = sum(r["wall"] - r["marks"]["end"] for r in rows) / len(rows)
    ending = "| of which: the process ending after the command returned"
    print(f"{ending} | {exit_s:.2f} | {100 * exit_s / mean_wall:.1f}% |")
    print(f"| **process wall time** | {mean_wall:.2f} | 100% |")
    print(f"| **fixed cost (all but the epochs)** | {fixed:.2f} | {100 * fixed / mean_wall:.1f}% |")


if __name__ == "__main__":
    main()
