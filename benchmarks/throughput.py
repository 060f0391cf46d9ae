"""Training throughput (images/s) and peak memory of one training step, per method and batch size.

Each method's run is built with ``build_run(recipe, plugins, None)`` and the engine's own
``train_step`` is timed on batches from the engine's ``BatchSource`` with every loss of the recipe
(the batch fetch is included, exactly as in the training loop; per-epoch hooks such as E-steps and
evaluation are not). The backbone is fixed per input so that methods differ only by their heads,
views and losses:

* ``digits``: scikit-learn's digits (8×8 grey, 1,797 images), each method's digits recipe
  (``recipes/<method>.toml``, batched ``TensorAffine`` views), ``small_cnn`` width 64, out 256;
* ``cifar10``: CIFAR-10 JPEG (60,000 32×32 RGB images from ``$CLUSTKIT_SHARED_DATA/cifar-10-jpg``)
  with each method's own CIFAR views at 32 px (``CIFAR_RECIPES``: CC's weak views for CC, DCHL and
  IcicleGCN, SACC's weak + strong views, DigPro's SimCLR views), ``resnet`` depth 18, CIFAR stem;
* ``cifar10_small``: the same with the CPU-budget ``small_cnn`` (width 32, out 256), where the
  views are a large share of the step;
* ``usps``: USPS (16×16 grey, 9,298 images from ``$CLUSTKIT_SHARED_DATA/usps``) through each
  method's digits recipe unchanged (its ``small_cnn`` width 32 and views), the runs of
  ``benchmarks/quality/usps.toml``.

``--ceiling`` also times each row's model-only ceiling (the same run on one batch whose views
were made once before timing: model, heads, losses and optimizer, no data fetch and no
augmentation) and prints the step's share of it, so a row says how much of its step is data
and augmentation and how much is the network.

images/s counts dataset images per second (each image yields the method's 2–3 views). Peak
memory is the process's peak RSS during the timed steps on CPU (reset before them through
/proc/self/clear_refs; the figure includes the Python interpreter and libraries), and
``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/throughput.py --batch-sizes 64,128,256 --inputs digits,cifar10 --out throughput.json
    python benchmarks/throughput.py --device cuda --precision bf16 --channels-last --compile
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

REPO = Path(__file__).resolve().parents[1]
METHODS = ["cc", "sacc", "dchl", "digpro", "iciclegcn"]
# each method's paper-setting CIFAR recipe (DigPro: its 32-pixel Tiny-ImageNet one), for its views
CIFAR_RECIPES = {"cc": "cifar10/cc.toml", "sacc": "cifar10/sacc.toml", "dchl": "cifar10/dchl.toml",
                 "iciclegcn": "cifar10/iciclegcn.toml", "digpro": "tiny_imagenet/digpro.toml"}
CIFAR = ['data={name="cifar10", root="${CLUSTKIT_SHARED_DATA}/cifar-10-jpg"}', "views.size=32"]
INPUTS: dict[str, list[str]] = {
    "digits": ['backbone={name="small_cnn", width=64, out_dim=256}'],
    "cifar10": [*CIFAR, 'backbone={name="resnet", depth=18, stem="cifar"}'],
    "cifar10_small": [*CIFAR, 'backbone={name="small_cnn", width=32, out_dim=256}'],
    "usps": ['data={name="usps", root="${CLUSTKIT_SHARED_DATA}/usps"}'],
}
SHARED = ("cifar10", "cifar10_small", "usps")     # inputs read from $CLUSTKIT_SHARED_DATA


def comma_list(ap: argparse.ArgumentParser, text: str, allowed: Any, what: str) -> list[str]:
    """The comma-separated items of an option, each checked against ``allowed`` (an argparse error if not)."""
    items = [item for item in text.split(",") if item]
    if unknown := [item for item in items if item not in allowed]:
        ap.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return items


def recipe_path(method: str, kind: str) -> Path:
    return REPO / "recipes" / (CIFAR_RECIPES[method] if kind.startswith("cifar10") else f"{method}.toml")


def _trim() -> None:
    """Hand freed memory back to the OS so the next configuration's peak RSS is its own."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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


def _fit_groups(path: Path, batch: int) -> list[str]:
    """DCHL refuses in-batch groups >= batch size; halve them for batches that small."""
    import tomllib

    with open(path, "rb") as fh:
        groups = tomllib.load(fh).get("losses", {}).get("group", {}).get("groups")
    if isinstance(groups, int) and groups >= batch:
        return [f"losses.group.groups={max(2, batch // 2)}"]
    return []


def time_steps(path: Path, overrides: list[str], batch: int, args: argparse.Namespace, plugins: Any,
               ready_views: bool = False) -> dict[str, Any]:
    """Build the run of recipe ``path`` (with ``overrides``) and time ``args.steps`` of the engine's
    training steps after ``args.warmup`` untimed ones.

    ``ready_views`` measures the model-only ceiling: one batch is fetched and its views made once,
    before timing, and every timed step reuses them, so a step is the same model, heads, losses
    and optimizer with no data fetch and no augmentation."""
    from dataclasses import replace

    import torch

    from clustkit.engine.build import build_run
    from clustkit.engine.step import train_step
    from clustkit.recipe import load

    overrides = [*overrides, f"run.batch_size={batch}", f"run.device={args.device}",
                 f"run.precision={args.precision}", f"run.channels_last={'true' if args.channels_last else 'false'}",
                 *(["run.compile=true"] if getattr(args, "compile", False) else []),
                 "run.eval_every=0", "run.num_workers=0"]
    recipe = load(path, plugins.registry, overrides, installed_plugins=list(plugins.info))
    with contextlib.redirect_stderr(io.StringIO()):
        run = build_run(recipe, plugins, None)
        ctx = run.ctx
        run.hooks.hook.on_run_start(ctx=ctx)
        run.hooks.hook.on_epoch_start(ctx=ctx)
    ctx.model.train()
    losses = run.components.losses  # every loss of the recipe, in recipe order
    cuda = ctx.device.type == "cuda"

    def batches(source: Any) -> Any:
        epoch = 0
        while True:
            yield from source.train_batches(epoch)
            epoch += 1

    it = batches(ctx.source)
    first = next(it)
    n_views = len(ctx.make_views(first[0][:2], train=True))
    if ready_views:
        made = ctx.make_views(first[0], train=True)
        # the benchmark's own process: the view generator hands back the views made once
        run.components.views = replace(run.components.views, call=lambda **_: made)
        it = iter(lambda: first, None)
    for _ in range(args.warmup):
        train_step(run, next(it), losses)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        train_step(run, next(it), losses)
        if cuda and args.sync_each_step:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        torch.cuda.synchronize()
    total = sum(times)
    if cuda and not args.sync_each_step:  # per-step times are not meaningful without a sync: spread the total
        times = [total / len(times)] * len(times)
    row = {
        "backbone": recipe.backbone.name + (
            f"{recipe.backbone.depth}-{recipe.backbone.stem}" if recipe.backbone.name == "resnet"
            else f"-w{recipe.backbone.width}"),
        "image": f"{ctx.in_channels}x{ctx.image_size[0]}x{ctx.image_size[1]}", "batch": batch, "views": n_views,
        "steps": args.steps, "step_ms": 1000 * statistics.median(times), "step_ms_mean": 1000 * total / len(times),
        "images_per_s": batch * len(times) / total, "device": str(ctx.device), "precision": args.precision,
        "channels_last": args.channels_last, "compile": bool(getattr(args, "compile", False)),
        "peak_rss_mb": _status_mb("VmHWM") if reset else None, "rss_before_mb": rss_before,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    del ctx, losses, it
    _trim()
    return row


def measure(method: str, kind: str, batch: int, args: argparse.Namespace, plugins: Any) -> dict[str, Any]:
    """One row of the table: ``method``'s recipe for input ``kind`` at ``batch``."""
    path = recipe_path(method, kind)
    fitted = _fit_groups(path, batch)
    row = time_steps(path, [*INPUTS[kind], *fitted], batch, args, plugins)
    if getattr(args, "ceiling", False):
        ceiling = time_steps(path, [*INPUTS[kind], *fitted], batch, args, plugins, ready_views=True)
        row["ceiling_images_per_s"] = ceiling["images_per_s"]
    return {"method": method, "input": kind, **row, "overrides": fitted}


def table(rows: list[dict[str, Any]]) -> str:
    gpu = any(r.get("peak_gpu_mb") is not None for r in rows)
    mem_head = "peak GPU MB" if gpu else "peak RSS MB"
    ceiling = any("ceiling_images_per_s" in r for r in rows)
    extra = " ceiling images/s | share of ceiling |" if ceiling else ""
    lines = [f"| method | input | backbone | batch | views | images/s | step ms (median) | {mem_head} |{extra}",
             "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if ceiling else "")]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['input']} | – | {r['batch']} | – | failed: {r['error']} | – | – |"
                         + (" – | – |" if ceiling else ""))
            continue
        mem = r["peak_gpu_mb"] if gpu else r["peak_rss_mb"]
        line = (f"| {r['method']} | {r['input']} | {r['backbone']} | {r['batch']} | {r['views']} | "
                f"{r['images_per_s']:.0f} | {r['step_ms']:.0f} | {'–' if mem is None else f'{mem:.0f}'} |")
        if ceiling:
            top = r.get("ceiling_images_per_s")
            line += f" {top:.0f} | {r['images_per_s'] / top:.2f} |" if top else " – | – |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    ap.add_argument("--inputs", default="digits,cifar10", help="digits, cifar10, cifar10_small and/or usps")
    ap.add_argument("--batch-sizes", default="64,128,256")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone (run.compile)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also time each row's model-only ceiling (views made once, reused) and print the share")
    ap.add_argument("--sync-each-step", action="store_true", help="GPU: synchronise after each step (per-step times)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()

    import torch

    from clustkit.plugin_system.manager import get_plugins

    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = get_plugins()
    methods = comma_list(ap, args.methods, METHODS, "methods")
    kinds = comma_list(ap, args.inputs, INPUTS, "inputs")
    if any(k in SHARED for k in kinds) and not os.environ.get("CLUSTKIT_SHARED_DATA"):
        ap.error(f"the inputs {', '.join(SHARED)} read $CLUSTKIT_SHARED_DATA: set CLUSTKIT_SHARED_DATA")
    rows: list[dict[str, Any]] = []
    for kind in kinds:
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
