"""Training throughput (images/s) and peak memory of one training step, per method and batch size.

For every method recipe present in recipes/ (cc, sacc, dchl, digpro, iciclegcn), the run is
built with ``build_run(recipe, plugins, None)`` and the engine's own ``train_step`` is timed on
batches from the engine's ``BatchSource`` with every loss of the recipe (the batch fetch is
included, exactly as in the training loop; per-epoch hooks such as E-steps and evaluation are not). The backbone is fixed
per input kind so that methods differ only by their heads, views and losses:

* ``digits``: scikit-learn's digits (8×8 grey, 1,797 images), ``small_cnn`` width 64, out 256;
* ``rgb32``: fabricated 32×32 RGB images (a dataset registered by this script; contents do not
  change the cost of a step), ``resnet`` depth 18 with the CIFAR stem.

images/s counts dataset images per second (each image yields the method's 2–3 views). Peak
memory is the process's peak RSS during the timed steps on CPU (reset before them through
/proc/self/clear_refs; the figure includes the Python interpreter and libraries), and
``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/throughput.py --batch-sizes 64,128,256 --inputs digits,rgb32 --out throughput.json
    python benchmarks/throughput.py --device cuda --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from clustkit import ComponentConfig, Registry, hookimpl

REPO = Path(__file__).resolve().parents[1]
METHODS = ["cc", "sacc", "dchl", "digpro", "iciclegcn"]
INPUTS: dict[str, list[str]] = {
    "digits": ['backbone={name="small_cnn", width=64, out_dim=256}'],
    "rgb32": ['data={name="bench_synthetic", channels=3, size=32, n=1024, classes=10}',
              'backbone={name="resnet", depth=18, stem="cifar"}'],
}


class SyntheticConfig(ComponentConfig):
    channels: int = Field(3, ge=1, le=3)
    size: int = Field(32, ge=4)
    n: int = Field(1024, ge=2)
    classes: int = Field(10, ge=2)
    seed: int = 0


def build_synthetic(cfg: SyntheticConfig, ctx: Any) -> Any:
    from clustkit.data.base import InMemoryDataset

    rng = np.random.default_rng(cfg.seed)
    images = rng.integers(0, 256, size=(cfg.n, cfg.channels, cfg.size, cfg.size), dtype=np.uint8)
    labels = rng.integers(0, cfg.classes, size=cfg.n)
    return InMemoryDataset(images, labels, name="bench_synthetic", class_names=[str(i) for i in range(cfg.classes)])


class SyntheticPlugin:
    @hookimpl
    def register_components(self, registry: Registry) -> None:
        registry.add("dataset", "bench_synthetic", build_synthetic, SyntheticConfig,
                     doc="uniform-noise images of a given shape (throughput benchmark)")


def _trim() -> None:
    """Hand freed memory back to the OS so the next configuration's peak RSS is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _fit_groups(method: str, batch: int) -> list[str]:
    """DCHL refuses in-batch groups >= batch size; halve them for batches that small."""
    import tomllib

    with open(REPO / "recipes" / f"{method}.toml", "rb") as fh:
        groups = tomllib.load(fh).get("losses", {}).get("group", {}).get("groups")
    if isinstance(groups, int) and groups >= batch:
        return [f"losses.group.groups={max(2, batch // 2)}"]
    return []


def measure(method: str, kind: str, batch: int, args: argparse.Namespace, plugins: Any) -> dict[str, Any]:
    import torch

    from clustkit.engine.build import build_run, loss_callers
    from clustkit.engine.step import train_step
    from clustkit.recipe import load

    fitted = _fit_groups(method, batch)
    overrides = [*INPUTS[kind], f"run.batch_size={batch}", f"run.device={args.device}",
                 f"run.precision={args.precision}", f"run.channels_last={'true' if args.channels_last else 'false'}",
                 "run.eval_every=0", "run.num_workers=0", *fitted]
    recipe = load(REPO / "recipes" / f"{method}.toml", plugins.registry, overrides, installed_plugins=list(plugins.info))
    with contextlib.redirect_stderr(io.StringIO()):
        ctx = build_run(recipe, plugins, None)
        ctx.hook.on_run_start(ctx=ctx)
        ctx.hook.on_epoch_start(ctx=ctx)
    ctx.model.train()
    losses = loss_callers(ctx.pm, ctx.components, [k for k in ctx.components if k.startswith("losses.")])
    cuda = ctx.device.type == "cuda"

    def batches(source: Any) -> Any:
        epoch = 0
        while True:
            yield from source.train_batches(epoch)
            epoch += 1

    it = batches(ctx.source)
    for _ in range(args.warmup):
        x, _, _ = batch = next(it)
        train_step(ctx, batch, losses)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        x, _, _ = batch = next(it)
        train_step(ctx, batch, losses)
        if cuda and args.sync_each_step:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        torch.cuda.synchronize()
    total = sum(times)
    if cuda and not args.sync_each_step:  # per-step times are not meaningful without a sync: spread the total
        times = [total / len(times)] * len(times)
    row = {
        "method": method, "input": kind, "backbone": recipe.backbone.name + (
            f"{recipe.backbone.depth}-{recipe.backbone.stem}" if kind == "rgb32" else f"-w{recipe.backbone.width}"),
        "image": f"{ctx.in_channels}x{ctx.image_size[0]}x{ctx.image_size[1]}", "batch": batch,
        "views": len(ctx.hook.make_views(images=x[:2], train=True, ctx=ctx) or {}),
        "steps": args.steps, "step_ms": 1000 * statistics.median(times), "step_ms_mean": 1000 * total / len(times),
        "images_per_s": batch * len(times) / total, "device": str(ctx.device), "precision": args.precision,
        "channels_last": args.channels_last, "overrides": fitted,
        "peak_rss_mb": _status_mb("VmHWM") if reset else None, "rss_before_mb": rss_before,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    del ctx, losses, it
    _trim()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    gpu = any(r.get("peak_gpu_mb") is not None for r in rows)
    mem_head = "peak GPU MB" if gpu else "peak RSS MB"
    lines = [f"| method | input | backbone | batch | views | images/s | step ms (median) | {mem_head} |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['input']} | – | {r['batch']} | – | failed: {r['error']} | – | – |")
            continue
        mem = r["peak_gpu_mb"] if gpu else r["peak_rss_mb"]
        lines.append(f"| {r['method']} | {r['input']} | {r['backbone']} | {r['batch']} | {r['views']} | "
                     f"{r['images_per_s']:.0f} | {r['step_ms']:.0f} | {'–' if mem is None else f'{mem:.0f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    ap.add_argument("--inputs", default="digits,rgb32", help="digits and/or rgb32")
    ap.add_argument("--batch-sizes", default="64,128,256")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    ap.add_argument("--sync-each-step", action="store_true", help="GPU: synchronise after each step (per-step times)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()

    import torch

    from clustkit.plugin_system.manager import get_plugins

    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = get_plugins()
    plugins.register(SyntheticPlugin(), name="bench_synthetic")
    methods = [m for m in args.methods.split(",") if m]
    missing = [m for m in methods if not (REPO / "recipes" / f"{m}.toml").exists()]
    methods = [m for m in methods if m not in missing]
    if missing:
        print(f"skipping methods without a recipe: {', '.join(missing)}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for kind in [k for k in args.inputs.split(",") if k]:
        if kind not in INPUTS:
            ap.error(f"unknown input {kind!r}; choose from {', '.join(INPUTS)}")
        for method in methods:
            for batch in [int(b) for b in args.batch_sizes.split(",") if b]:
                try:
                    row = measure(method, kind, batch, args, plugins)
                except Exception as exc:  # one method's failure must not hide the others' numbers
                    row = {"method": method, "input": kind, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}
                    _trim()
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    meta = {"host": platform.platform(terse=True), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "command": "python " + " ".join(sys.argv), "warmup": args.warmup, "steps": args.steps}
    print(f"<!-- {json.dumps(meta)} -->")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
