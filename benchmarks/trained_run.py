"""Cost of using a trained run (docs/using-a-run.md): loading it, predicting a folder of PNG files,
re-evaluating with every candidate and the probes, exporting features, and writing the report.

    python benchmarks/trained_run.py RUN_DIR [--images N]

RUN_DIR is a finished run on an in-memory dataset (e.g. ``clustkit run cc --out runs/cc``); the
first N images of its dataset are written as PNG files, predicted, and compared with the run's
own ``assignments.csv``. Prints a markdown table (seconds, wall clock, this process only).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--images", type=int, default=0, help="PNG files to predict (default: the whole dataset)")
    args = ap.parse_args()

    from PIL import Image

    import clustkit
    from clustkit.engine.evaluation import evaluation, sample_features
    from clustkit.engine.reporting import write_run_report

    rows: list[tuple[str, float, str]] = []
    t = time.perf_counter()
    run = clustkit.load_run(args.run_dir)
    rows.append(("load_run (build + checkpoint)", time.perf_counter() - t, f"rule {run.rule} on {run.space}"))
    ds = run.ctx.dataset
    n = args.images or len(ds)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(n):
            img = ds[i][0].numpy()
            Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / f"{i:06d}.png")
        t = time.perf_counter()
        result = run.predict(folder)
        seconds = time.perf_counter() - t
        agree = float(np.mean(result.clusters == run.run_clusters()[:n]))
        rows.append((f"predict {n} PNG files", seconds, f"{n / seconds:.0f} images/s; agrees with assignments.csv "
                     f"on {agree:.4f}"))
    t = time.perf_counter()
    report = run.evaluate(probes=True)
    best = max(report["candidates"].items(), key=lambda kv: kv[1].get("acc", 0))
    rows.append(("evaluate (every candidate + kNN + linear probe)", time.perf_counter() - t,
                 f"{len(report['candidates'])} candidates, best by labels {best[0]} ACC {best[1]['acc']:.3f}; "
                 f"kNN {report['knn_acc']:.3f}, linear {report['linear_probe_acc']:.3f}"))
    t = time.perf_counter()
    feats = run.features("backbone")
    rows.append(("export backbone features", time.perf_counter() - t, f"{feats.shape}"))
    t = time.perf_counter()
    pred = evaluation(run.state)
    features = sample_features(run.state)
    with tempfile.TemporaryDirectory() as tmp:
        write_run_report(run.state, Path(tmp), pred, {"method": "benchmark"}, features)
        pngs = sorted(p.name for p in (Path(tmp) / "report").glob("*.png"))
    rows.append(("report (evaluation, 2,000-item sample, figures)", time.perf_counter() - t, ", ".join(pngs)))

    print(f"run: {args.run_dir} ({getattr(ds, 'name', '')}, {len(ds)} items)\n")
    print("| step | seconds | note |\n|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.1f} | {note} |")


if __name__ == "__main__":
    main()
