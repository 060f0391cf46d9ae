"""clustkit's training step against the CC and SACC authors' own, on the same data, model and device.

For each method and ResNet depth, three measurements run in fresh processes, pair after pair
(reference, clustkit, ceiling; reference, clustkit, ceiling; ...), so that drifting machine load
hits all three alike:

* ``reference``: the authors' step, built from their ``modules/`` (``transform.Transforms``,
  ``resnet.get_resnet``, ``network.Network``, ``contrastive_loss``) imported from the clone the
  user names, with their DataLoader (PIL transforms in ``os.cpu_count()`` worker processes,
  shuffle, drop_last) and the body of their ``train()``: CC's two views and two losses, SACC's
  two weak views, the strong RandAugment view and five losses (sigma 1). Their code is never
  copied into this repository.
* ``clustkit``: the engine's own training step (``clustkit.engine.step.train_step``, batch fetch
  and batched views included) on the method's CIFAR-10 recipe with the same model (ResNet-18 or
  -34 with the ImageNet stem, as CC builds them), heads, losses, batch and optimizer (Adam 3e-4).
* ``ceiling``: the same clustkit step on views made once before timing: the model, heads, losses
  and optimizer alone, which no data path can beat.

Data: the CIFAR-10 JPEG training split (50,000 images, 32×32) from ``$CLUSTKIT_SHARED_DATA``
(decoded once; the reference reads the same uint8 arrays through a dataset shaped like
torchvision's ``CIFAR10``). Needs the authors' repositories cloned and OpenCV (their
``transform.py`` imports ``cv2``): ``pip install -e ".[reference]"``.

    git clone https://github.com/Yunfan-Li/Contrastive-Clustering ~/src/cc
    git clone https://github.com/dengxiaozhi/SACC ~/src/sacc
    python benchmarks/vs_reference.py --cc-repo ~/src/cc --sacc-repo ~/src/sacc --depths 18,34 --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECIPES = {"cc": "cifar10/cc.toml", "sacc": "cifar10/sacc.toml"}
KINDS = ("reference", "clustkit", "ceiling")


def cifar_train(root: str) -> Any:
    from clustkit.data.cifar import load_cifar10

    return load_cifar10(root, split="train")


class ArrayImages:
    """Images kept decoded in memory and handed out as PIL images, as torchvision's CIFAR10 does."""

    def __init__(self, images: Any, labels: Any, transform: Any):
        self.data = images.permute(0, 2, 3, 1).numpy()   # N×H×W×C uint8
        self.targets = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The authors' step: their modules, their DataLoader, the body of their train()."""
    import torch

    repo = Path(args.cc_repo if args.method == "cc" else args.sacc_repo).expanduser()
    if not (repo / "modules" / "network.py").is_file():
        raise SystemExit(f"{repo} is not a clone of the {args.method.upper()} authors' repository "
                         "(no modules/network.py); pass --cc-repo / --sacc-repo")
    sys.path.insert(0, str(repo))
    from modules import contrastive_loss, network, resnet, transform  # the authors' code

    device = torch.device(args.device)
    data = cifar_train(args.data)
    dataset = ArrayImages(data.images, data.labels, transform.Transforms(size=32, s=0.5))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=os.cpu_count() or 1)
    model = network.Network(resnet.get_resnet(f"ResNet{args.depth}"), 128, 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=0.0)
    instance = contrastive_loss.InstanceLoss(args.batch, 0.5, device).to(device)
    cluster = contrastive_loss.ClusterLoss(10, 1.0, device).to(device)

    def step(views: list[Any]) -> float:
        optimizer.zero_grad()
        xs = [x.to(device) for x in views]
        if args.method == "cc":
            z_i, z_j, c_i, c_j = model(*xs)
            loss = instance(z_i, z_j) + cluster(c_i, c_j)
        else:
            z_i, z_j, z_s, c_i, c_j, c_s = model(*xs)
            loss = (instance(z_i, z_j) + instance(z_j, z_s)
                    + (cluster(c_i, c_j) + cluster(c_i, c_s) + cluster(c_j, c_s)) * 1.0)
        loss.backward()
        optimizer.step()
        return loss.item()   # their loop reads the loss every step

    model.train()
    batches = iter(loader)
    for _ in range(args.warmup):
        step(next(batches)[0])
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(next(batches)[0])
    elapsed = time.perf_counter() - t0
    return {"images_per_s": args.batch * args.steps / elapsed, "workers": os.cpu_count()}


def run_clustkit(args: argparse.Namespace, ready_views: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from clustkit.plugin_system.manager import get_plugins
    from throughput import time_steps

    overrides = [f'data={{name="cifar10", root="{args.data}", split="train"}}', "views.size=32",
                 f'backbone={{name="resnet", depth={args.depth}, stem="imagenet"}}']
    if args.method == "sacc":
        overrides.append('views.normalize="strong"')  # the authors normalise the strong view only
    row = time_steps(HERE.parent / "recipes" / RECIPES[args.method], overrides, args.batch, args, get_plugins(),
                     ready_views=ready_views)
    return {"images_per_s": row["images_per_s"], "peak_rss_mb": row["peak_rss_mb"]}


def worker(args: argparse.Namespace) -> None:
    result = run_reference(args) if args.worker == "reference" else run_clustkit(args, args.worker == "ceiling")
    print(json.dumps({"kind": args.worker, "method": args.method, "depth": args.depth, **result}), flush=True)


def measure(kind: str, method: str, depth: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--worker", kind, "--method", method, "--depth", str(depth),
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--device", args.device, "--precision", args.precision, "--data", args.data,
           "--cc-repo", args.cc_repo or "", "--sacc-repo", args.sacc_repo or ""]
    cmd += ["--channels-last"] if args.channels_last else []
    cmd += ["--compile"] if args.compile else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {method} ResNet-{depth} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cc-repo", help="a clone of github.com/Yunfan-Li/Contrastive-Clustering")
    ap.add_argument("--sacc-repo", help="a clone of github.com/dengxiaozhi/SACC")
    ap.add_argument("--methods", default="cc,sacc")
    ap.add_argument("--depths", default="18", help="ResNet depths, e.g. 18,34")
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds of the three measurements")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="clustkit's step only")
    ap.add_argument("--channels-last", action="store_true", help="clustkit's step only")
    ap.add_argument("--compile", action="store_true", help="clustkit's step only (run.compile)")
    ap.add_argument("--data", default=None,
                    help="the cifar-10-jpg folder (default: $CLUSTKIT_SHARED_DATA/cifar-10-jpg)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="which measurements (default: all three)")
    ap.add_argument("--out", type=Path, help="write the measurements as JSON here")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sync_each_step = False
    if args.data is None:
        shared = os.environ.get("CLUSTKIT_SHARED_DATA")
        if not shared:
            ap.error("give --data or set CLUSTKIT_SHARED_DATA (the folder holding cifar-10-jpg/)")
        args.data = str(Path(shared) / "cifar-10-jpg")
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(HERE))
    from throughput import comma_list

    methods = comma_list(ap, args.methods, RECIPES, "methods")
    kinds = comma_list(ap, args.kinds, KINDS, "kinds")
    for m in methods:
        if "reference" in kinds and not getattr(args, f"{m}_repo"):
            ap.error(f"--{m}-repo is needed to measure the {m.upper()} authors' step "
                     "(or leave 'reference' out of --kinds)")
    rows: list[dict[str, Any]] = []
    for method in methods:
        for depth in [int(d) for d in args.depths.split(",") if d]:
            for pair in range(args.pairs):
                r = {kind: measure(kind, method, depth, args) for kind in kinds}
                rows.append({"method": method, "depth": depth, "pair": pair, **r})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    import torch

    meta = {"host": platform.platform(terse=True), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": args.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "command": "python " + " ".join(sys.argv)}
    print(f"<!-- {json.dumps(meta)} -->")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def table(rows: list[dict[str, Any]]) -> str:
    """Images/s of each measurement and the two ratios, per pair and as medians (– where not measured)."""

    def cell(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.1f}" if key in r else "–"

    def ratio(rs: list[dict[str, Any]], a: str, b: str) -> str:
        pairs = [x[a] / x[b] for x in rs if a in x and b in x]
        return f"{statistics.median(pairs):.2f}" if pairs else "–"

    lines = ["| method | model | pair | reference img/s | clustkit img/s | ceiling img/s | clustkit / reference | "
             "clustkit / ceiling |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | ResNet-{r['depth']} | {r['pair']} | {cell(r, 'reference')} | "
                     f"{cell(r, 'clustkit')} | {cell(r, 'ceiling')} | {ratio([r], 'clustkit', 'reference')} | "
                     f"{ratio([r], 'clustkit', 'ceiling')} |")
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["depth"]), []).append(r)
    for (method, depth), rs in groups.items():
        med = {k: {k: statistics.median(x[k] for x in rs)} if k in rs[0] else {} for k in KINDS}
        lines.append(f"| **{method}** | **ResNet-{depth}** | median | {cell(med['reference'], 'reference')} | "
                     f"{cell(med['clustkit'], 'clustkit')} | {cell(med['ceiling'], 'ceiling')} | "
                     f"{ratio(rs, 'clustkit', 'reference')} | {ratio(rs, 'clustkit', 'ceiling')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
