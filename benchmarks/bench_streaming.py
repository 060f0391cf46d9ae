"""Training from disk against training from memory, on a fabricated folder of small images.

Writes N small JPEG images (smooth random colour fields, 10 class folders) to disk, and the same
images as WebDataset shards, then trains CC (recipes/cc.toml: small CNN, batched tensor views) for
one epoch three ways, each in its own ``clustkit run`` process, one at a time:

- ``memory``: ``data.in_memory = true`` (every image decoded once before training);
- ``folder``: ``data.in_memory = false``, the image folder decoded in DataLoader workers every epoch;
- ``shards``: ``data.in_memory = false``, the WebDataset shards read the same way.

It reports the training throughput (images/s of the epoch, from metrics.jsonl), the run's wall time
and the peak RSS of the largest process (the run, or one DataLoader worker), as a markdown table.

    python benchmarks/bench_streaming.py --n 100000 --size 32 --dir /tmp/streaming --out streaming.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clustkit.bench.execute import CHILD as _CHILD  # the bench's run process: records its peak RSS

MODES = ("memory", "folder", "shards")


def _images(n: int, size: int, seed: int, start: int) -> np.ndarray:
    """Smooth random colour fields (noise upsampled 4×), so JPEG sizes and decode times are image-like."""
    from PIL import Image

    rng = np.random.default_rng(seed + start)
    small = rng.integers(0, 256, (n, size // 4, size // 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)) for a in small])


def fabricate(root: Path, n: int, size: int, classes: int = 10, block: int = 5000) -> None:
    """``root/folder/c<k>/<i>.jpg`` and ``root/shards/part-*.tar`` (webdataset's ShardWriter), once."""
    import webdataset
    from PIL import Image

    folder, shards, done = root / "folder", root / "shards", root / f"done-{n}-{size}"
    if done.exists():
        return
    for k in range(classes):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
    shards.mkdir(parents=True, exist_ok=True)
    with webdataset.ShardWriter(str(shards / "part-%06d.tar"), maxcount=10_000, verbose=0) as sink:
        for start in range(0, n, block):
            for j, a in enumerate(_images(min(block, n - start), size, 0, start)):
                i = start + j
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="JPEG", quality=90)
                (folder / f"c{i % classes}" / f"{i:07d}.jpg").write_bytes(buf.getvalue())
                sink.write({"__key__": f"{i:07d}", "jpg": buf.getvalue(), "cls": i % classes})
    done.touch()


def run_mode(mode: str, root: Path, size: int, out: Path, epochs: int) -> dict:
    data = (f'data={{name="webdataset", root="{root / "shards"}", image_size={size}, in_memory=false}}'
            if mode == "shards"
            else f'data={{name="image_folder", root="{root / "folder"}", image_size={size}, '
                 f'in_memory={"true" if mode == "memory" else "false"}}}')
    run_dir = out / mode
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.mkdir(parents=True)
    args = ["run", "cc", "--out", str(run_dir), "--set", data, "--set", f"run.epochs={epochs}",
            "--set", "run.eval_every=0", "--set", "run.report=false", "--set", "run.batch_size=256"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(out / f"{mode}-resources.json"), *args],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    epochs_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    res = json.loads((out / f"{mode}-resources.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"mode": mode, "images_per_s": [r["images_per_s"] for r in epochs_rows if "images_per_s" in r],
            "epoch_s": [r["epoch_s"] for r in epochs_rows if "epoch_s" in r], "run_wall_s": summary["wall_s"],
            "process_wall_s": round(wall, 1), "peak_rss_mb": res["peak_rss_mb"], "acc": summary.get("acc")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/clustkit-streaming"))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    a = ap.parse_args()
    t0 = time.perf_counter()
    fabricate(a.dir, a.n, a.size)
    made = time.perf_counter() - t0
    on_disk = sum(f.stat().st_size for f in (a.dir / "folder").rglob("*.jpg"))
    rows = [run_mode(m, a.dir, a.size, a.dir / "runs", a.epochs) for m in a.modes.split(",")]
    base = next((r for r in rows if r["mode"] == "memory"), None)
    lines = [f"{a.n:,} JPEG images {a.size}×{a.size} ({on_disk / 2**20:.0f} MB on disk; fabricated in {made:.0f} s, "
             f"or found), CC recipes/cc.toml with batch 256, {a.epochs} epoch(s); "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs.", "",
             "| mode | train images/s | vs memory | epoch s | run wall s | peak RSS MB (largest process) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ips = float(np.mean(r["images_per_s"]))
        ratio = f"{ips / float(np.mean(base['images_per_s'])):.2f}" if base else "-"
        lines.append(f"| {r['mode']} | {ips:.0f} | {ratio} | {sum(r['epoch_s']):.1f} | {r['run_wall_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(rows, indent=2))
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
