"""The training loop: build a run from a recipe, train, evaluate, write the run folder.

Run folder (rank 0 writes, everything atomically):
``recipe.toml`` (fully resolved), ``metrics.jsonl`` (one object per evaluation),
``summary.json``, ``assignments.csv`` and ``checkpoints/last.pt``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clustkit import dist
from clustkit.engine import checkpoint as ckpt
from clustkit.engine.context import BatchSource, Network, Prediction, RunContext
from clustkit.engine.outputs import StepOutputs
from clustkit.errors import RecipeError, UserError
from clustkit.plugins import PluginSet, new_manager
from clustkit.recipe import Recipe, dumps, flatten

CHECKPOINT = "checkpoints/last.pt"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device is {name!r} but no CUDA GPU is visible; use device = \"auto\" or \"cpu\".")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _HeadProvider:
    """Puts the recipe's [heads.*] into the network through the ``build_heads`` hook."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules = modules

    from clustkit import hookimpl as _hookimpl

    @_hookimpl
    def build_heads(self, in_dim: int, ctx: RunContext) -> dict[str, torch.nn.Module]:
        return self.modules


class Run:
    """One training run. ``Run(recipe, plugins, out_dir).execute(resume=...)``."""

    def __init__(self, recipe: Recipe, plugins: PluginSet, out_dir: Path | None):
        self.recipe = recipe
        self.plugins = plugins
        self.out_dir = out_dir
        self.ckpt_path = out_dir / CHECKPOINT if out_dir else None
        self.wall_before = 0.0
        self.history: list[dict[str, Any]] = []

    # -- building ---------------------------------------------------------------------------
    def _build(self, kind: str, key: str, cfg: Any, ctx: RunContext) -> Any:
        spec = self.plugins.registry.get(kind, cfg.name)
        assert spec is not None
        ctx.current_key = key  # lets a component name its loss terms after its recipe key
        try:
            return spec.build(cfg, ctx)
        except UserError:
            raise
        except (ValueError, FileNotFoundError) as exc:
            raise RecipeError(self.recipe.path, key, f"{kind} {cfg.name!r} could not be built: {exc}") from None

    def build(self) -> RunContext:
        r = self.recipe
        device = pick_device(r.run.device)
        dist.init_from_env(device.type)
        if r.run.batch_size % dist.world_size():
            raise RecipeError(r.path, "run.batch_size", f"must be divisible by the number of processes ({dist.world_size()}).")
        seed_everything(r.run.seed)
        if r.run.deterministic:
            torch.use_deterministic_algorithms(True)
        ctx = RunContext(r, self.out_dir, device)
        try:
            from rich.console import Console

            ctx.console = Console(stderr=True)
        except ImportError:  # pragma: no cover
            pass
        ctx.dataset = self._build("dataset", "data", r.data, ctx)
        ds = ctx.dataset
        ctx.in_channels = ds.channels
        ctx.image_size = tuple(ds.image_size)
        ctx.n_clusters = r.run.n_clusters or ds.num_classes or 0
        if ctx.n_clusters < 2:
            raise RecipeError(r.path, "run.n_clusters", "is required for a dataset without labels (how many clusters?).")
        if len(ds) < r.run.batch_size and r.run.drop_last:
            raise RecipeError(r.path, "run.batch_size", f"is {r.run.batch_size} but the dataset has only {len(ds)} images.")
        ctx.source = self._batch_source(ds, r.run.seed, device)
        if r.unlabeled is not None:
            ctx.unlabeled_source = self._unlabeled_source(ctx)
        backbone = self._build("backbone", "backbone", r.backbone, ctx)
        ctx.backbone_dim = int(backbone.out_dim)
        heads = {k: self._build("head", f"heads.{k}", cfg, ctx) for k, cfg in r.heads.items()}

        pm = new_manager()
        for name, plugin in self.plugins.pm.list_name_plugin():
            if plugin is not None:
                pm.register(plugin, name=f"plugin:{name}")
        pm.register(_HeadProvider(heads), name="heads")
        ctx.pm = pm
        for key, kind, cfg in r.components:
            if kind in ("dataset", "backbone", "head"):
                continue
            if kind == "loss" and getattr(cfg, "weight", 1.0) == 0:
                continue  # a removed term costs nothing
            comp = self._build(kind, key, cfg, ctx)
            ctx.components[key] = comp
            pm.register(comp, name=key)
        merged: dict[str, torch.nn.Module] = {}
        for contribution in pm.hook.build_heads(in_dim=ctx.backbone_dim, ctx=ctx):
            for name, module in (contribution or {}).items():
                if name in merged and merged[name] is not module:
                    raise RecipeError(r.path, f"heads.{name}", "is contributed twice (by the recipe and a component).")
                merged[name] = module
        ctx.model = Network(backbone, merged).to(device)
        if r.run.channels_last:
            ctx.model = ctx.model.to(memory_format=torch.channels_last)
        if r.momentum is not None:
            mom = copy.deepcopy(ctx.model)
            keep = set(r.momentum.heads)
            for name in list(mom.heads):
                if name not in keep:
                    del mom.heads[name]
            for p in mom.parameters():
                p.requires_grad_(False)
            ctx.momentum_model = mom
        self._sync_initial_weights(ctx)
        ctx.optimizer = self._optimizer(ctx)
        ctx.total_steps = ctx.steps_per_epoch() * r.run.epochs
        ctx.scheduler = self._scheduler(ctx)
        ctx._save_checkpoint = lambda: self.save(ctx)
        return ctx

    def _batch_source(self, ds: Any, seed: int, device: torch.device) -> BatchSource:
        """Batches of ``ds`` as the recipe's run section sets them (the global batch split over ranks)."""
        run = self.recipe.run
        return BatchSource(ds, run.batch_size // dist.world_size() * dist.world_size(), run.eval_batch_size,
                           run.drop_last, seed, device, run.num_workers)

    def _unlabeled_source(self, ctx: RunContext) -> BatchSource:
        """The items of the [unlabeled] pass (e.g. STL-10's 100k unlabelled images), batched like [data]."""
        r = self.recipe
        extra = self._build("dataset", "unlabeled", r.unlabeled, ctx)
        ds = ctx.dataset
        if extra.channels != ds.channels or tuple(extra.image_size) != tuple(ds.image_size):
            raise RecipeError(r.path, "unlabeled", f"holds {extra.channels}-channel {tuple(extra.image_size)} images but "
                              f"[data] holds {ds.channels}-channel {tuple(ds.image_size)} ones; one network sees both, "
                              "so set image_size / channels to match.")
        source = self._batch_source(extra, r.run.seed + 7919, ctx.device)
        if source.steps_per_epoch() == 0:
            raise RecipeError(r.path, "unlabeled", f"has {len(extra)} images, fewer than run.batch_size "
                              f"({r.run.batch_size}).")
        return source

    def _sync_initial_weights(self, ctx: RunContext) -> None:
        if dist.world_size() > 1:
            assert ctx.model is not None
            for t in list(ctx.model.parameters()) + list(ctx.model.buffers()):
                torch.distributed.broadcast(t.data, src=0)
            if ctx.momentum_model is not None:
                ctx.momentum_model.load_state_dict(
                    {k: v for k, v in ctx.model.state_dict().items() if k in ctx.momentum_model.state_dict()})

    def _optimizer(self, ctx: RunContext) -> torch.optim.Optimizer:
        o = self.recipe.optimizer
        lr = o.lr * (self.recipe.run.batch_size / o.lr_scale_batch if o.lr_scale_batch else 1.0)
        groups: dict[float, list[torch.nn.Parameter]] = {}
        assert ctx.model is not None
        for name, p in ctx.model.named_parameters():
            if not p.requires_grad:
                continue
            mult = next((m for prefix, m in o.lr_mult.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(mult, []).append(p)
        params = [{"params": ps, "lr": lr * m, "lr_mult": m} for m, ps in groups.items()]
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, betas=o.betas, weight_decay=o.weight_decay)

    def _scheduler(self, ctx: RunContext) -> torch.optim.lr_scheduler.LambdaLR:
        s = self.recipe.schedule
        assert ctx.source is not None and ctx.optimizer is not None
        warm = int(s.warmup_epochs * ctx.steps_per_epoch())
        total = max(1, ctx.total_steps)
        base = self.recipe.optimizer.lr
        floor = s.min_lr / base if base else 0.0

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            if s.name == "constant":
                return 1.0
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(ctx.optimizer, factor)

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, ctx: RunContext) -> None:
        if not ctx.is_main or self.ckpt_path is None:
            return
        assert ctx.model is not None and ctx.optimizer is not None
        states: dict[str, Any] = {}
        for part in ctx.hook.checkpoint_state(ctx=ctx):
            states.update(part or {})
        state = {
            "epoch": ctx.epoch, "step": ctx.step, "phase": ctx.phase,
            "model": ctx.model.state_dict(),
            "momentum_model": ctx.momentum_model.state_dict() if ctx.momentum_model is not None else None,
            "optimizer": ctx.optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
            "rng": ckpt.rng_state(), "components": states, "wall_s": self.wall_before + self._elapsed(),
            "fingerprint": self.recipe.fingerprint(), "history": self.history,
        }
        ckpt.atomic_torch_save(state, self.ckpt_path)

    def restore(self, ctx: RunContext) -> bool:
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return False
        state = ckpt.load(self.ckpt_path)
        if state.get("fingerprint") != self.recipe.fingerprint():
            raise UserError(
                f"cannot resume from {self.ckpt_path}: the recipe differs from the one the checkpoint was written with "
                f"(only run.epochs, run.eval_every and run.checkpoint_every may change). Compare with "
                f"{self.out_dir}/recipe.toml, or start a new run with another --out.")
        assert ctx.model is not None and ctx.optimizer is not None
        ctx.model.load_state_dict(state["model"])
        if ctx.momentum_model is not None and state["momentum_model"] is not None:
            ctx.momentum_model.load_state_dict(state["momentum_model"])
        ctx.optimizer.load_state_dict(state["optimizer"])
        ctx.scheduler.load_state_dict(state["scheduler"])
        ctx.epoch, ctx.step, ctx.phase = state["epoch"], state["step"], state["phase"]
        ckpt.set_rng_state(state["rng"])
        ctx.hook.load_checkpoint_state(state=state["components"], ctx=ctx)
        self.wall_before = float(state["wall_s"])
        self.history = list(state.get("history", []))
        return True

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, ctx: RunContext) -> tuple[Prediction, dict[str, float]]:
        from clustkit.metrics import evaluate_clustering

        pred = ctx.hook.evaluate(ctx=ctx)
        if pred is None:
            raise RuntimeError("no evaluator answered; add an [evaluation] section")
        labels = np.asarray(ctx.dataset.labels)
        metrics = evaluate_clustering(labels, pred.labels) if (labels >= 0).any() else {}
        return pred, metrics

    # -- the loop ---------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def execute(self, resume: bool = False) -> dict[str, Any]:
        self._t0 = time.perf_counter()
        ctx = self.build()
        r = self.recipe
        resumed = self.restore(ctx) if resume else False
        if resumed and ctx.epoch < r.run.epochs:
            ctx.phase = "train"  # resuming with a larger run.epochs extends training
        if resume and not resumed:
            ctx.print(f"[yellow]no checkpoint in {self.out_dir}; starting from scratch[/yellow]")
        if ctx.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.out_dir / "recipe.toml", dumps(r))
            self._write_metrics()
        ctx.hook.on_run_start(ctx=ctx)
        if ctx.phase == "train":
            self._train(ctx)
            ctx.phase = "post"
            self.save(ctx)
        if ctx.phase == "post":
            ctx.hook.after_training(ctx=ctx)
        pred, metrics = self.evaluate(ctx)
        summary = self._summary(ctx, pred, metrics)
        ctx.hook.on_run_end(ctx=ctx, summary=summary)
        ctx.phase = "done"
        if ctx.is_main and self.out_dir is not None:
            summary["wall_s"] = round(self.wall_before + self._elapsed(), 3)
            ckpt.atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            self._write_assignments(ctx, pred)
            self.save(ctx)
        dist.barrier()
        return summary

    def _train(self, ctx: RunContext) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        r = self.recipe
        assert ctx.model is not None and ctx.optimizer is not None and ctx.source is not None
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        ctx.model.train()
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        with Progress(*columns, console=ctx.console, disable=not ctx.is_main, transient=False) as progress:
            task = progress.add_task(r.run.name or Path(r.path).stem, total=r.run.epochs, completed=ctx.epoch, info="")
            while ctx.epoch < r.run.epochs:
                ctx.hook.on_epoch_start(ctx=ctx)
                logs: dict[str, float] = {}
                for name, source, losses in self._passes(ctx):
                    ctx.current_pass = name
                    sums: dict[str, torch.Tensor] = {}
                    batches = 0
                    for x, y, idx in source.train_batches(ctx.epoch):
                        terms = self._step(ctx, x, y, idx, params, losses)
                        for k, v in terms.items():
                            sums[k] = sums.get(k, 0) + v
                        batches += 1
                    prefix = "" if name == "data" else f"{name}_"
                    logs.update({prefix + k: float(v) / max(1, batches) for k, v in sums.items()})
                ctx.current_pass = "data"
                ctx.hook.on_epoch_end(ctx=ctx, logs=logs)
                dist.broadcast_buffers(ctx.model)
                ctx.epoch += 1
                entry: dict[str, Any] = {"epoch": ctx.epoch, "step": ctx.step, "losses": logs}
                if r.run.eval_every and (ctx.epoch % r.run.eval_every == 0) and ctx.epoch < r.run.epochs:
                    _, metrics = self.evaluate(ctx)
                    entry.update(metrics)
                    self.history.append(entry)
                    self._write_metrics()
                    ctx.print(f"epoch {ctx.epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                    ctx.model.train()
                else:
                    self._last_losses = entry
                if ctx.epoch % r.run.checkpoint_every == 0 or ctx.epoch == r.run.epochs:
                    self.save(ctx)
                progress.update(task, completed=ctx.epoch,
                                info=" ".join(f"{k}={v:.3f}" for k, v in logs.items()))

    def _passes(self, ctx: RunContext) -> list[tuple[str, BatchSource, Any]]:
        """The passes of one epoch: (name, batches, compute_loss caller). With an [unlabeled]
        section, a pass over those items computing only ``run.unlabeled_losses`` comes first."""
        assert ctx.source is not None and ctx.pm is not None
        passes: list[tuple[str, BatchSource, Any]] = []
        if ctx.unlabeled_source is not None:
            keep = {f"losses.{k}" for k in self.recipe.run.unlabeled_losses}
            drop = [c for key, c in ctx.components.items() if key.startswith("losses.") and key not in keep]
            passes.append(("unlabeled", ctx.unlabeled_source, ctx.pm.subset_hook_caller("compute_loss", drop)))
        passes.append(("data", ctx.source, ctx.hook.compute_loss))
        return passes

    def _step(self, ctx: RunContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
              params: list[torch.nn.Parameter], compute_loss: Any = None) -> dict[str, torch.Tensor]:
        assert ctx.optimizer is not None and ctx.model is not None
        if self.recipe.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = ctx.hook.make_views(images=x, train=True, ctx=ctx)
        if views is None:
            raise RuntimeError("no view generator answered make_views; add a [views] section")
        out = StepOutputs(ctx, x, y, idx, views)
        terms: dict[str, torch.Tensor] = {}
        with ctx.autocast():
            for part in (compute_loss or ctx.hook.compute_loss)(out=out, ctx=ctx):
                for k, v in (part or {}).items():
                    if k in terms:
                        raise RuntimeError(f"two losses returned a term named {k!r}")
                    terms[k] = v.float()
        if not terms:
            raise RuntimeError("no loss term was computed: every loss has weight 0 or the recipe has no [losses]")
        loss = torch.stack(list(terms.values())).sum()
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(params)
        ctx.optimizer.step()
        ctx.scheduler.step()
        ctx.step += 1
        if ctx.momentum_model is not None:
            ema_update(ctx.momentum_model, ctx.model, ctx.momentum_value())
        with torch.no_grad():
            ctx.hook.update_prototypes(out=out, ctx=ctx)
        detached = {k: v.detach() for k, v in terms.items()}
        detached["loss"] = loss.detach()
        return detached

    # -- outputs ----------------------------------------------------------------------------
    def _write_metrics(self) -> None:
        if self.out_dir is None or not dist.is_main():
            return
        text = "".join(json.dumps(e) + "\n" for e in self.history)
        ckpt.atomic_write_text(self.out_dir / "metrics.jsonl", text)

    def _summary(self, ctx: RunContext, pred: Prediction, metrics: dict[str, float]) -> dict[str, Any]:
        r = self.recipe
        final = dict(getattr(self, "_last_losses", None) or {"epoch": ctx.epoch, "step": ctx.step, "losses": {}})
        final.update(metrics)
        final["final"] = True
        self.history = [e for e in self.history if not e.get("final")]
        self.history.append(final)
        self._write_metrics()
        summary: dict[str, Any] = {
            "method": r.run.name or Path(r.path).stem,
            "dataset": getattr(ctx.dataset, "name", r.data.name),
            "n_samples": len(ctx.dataset),
            "n_clusters": ctx.n_clusters,
            "n_clusters_used": int(len(np.unique(pred.labels))),
            "evaluation": pred.source,
            "epochs": ctx.epoch,
            "seed": r.run.seed,
            "acc": metrics.get("acc"), "nmi": metrics.get("nmi"), "ari": metrics.get("ari"),
            "wall_s": round(self.wall_before + self._elapsed(), 3),
            "recipe": r.path,
            "world_size": dist.world_size(),
            "device": str(ctx.device),
            "plugins": {n: i.version for n, i in self.plugins.info.items()},
        }
        summary.update({k: v for k, v in pred.extra.items() if isinstance(v, (int, float, str))})
        return summary

    def _write_assignments(self, ctx: RunContext, pred: Prediction) -> None:
        assert self.out_dir is not None
        labels = np.asarray(ctx.dataset.labels)
        has = (labels >= 0).any()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "cluster", "label"] if has else ["index", "cluster"])
        for i, c in enumerate(pred.labels.tolist()):
            w.writerow([i, c, int(labels[i])] if has else [i, c])
        ckpt.atomic_write_text(self.out_dir / "assignments.csv", buf.getvalue())


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, momentum: float) -> None:
    """target <- m·target + (1-m)·online for every parameter the two share; buffers copied."""
    online_params = dict(online.named_parameters())
    for name, p in target.named_parameters():
        p.mul_(momentum).add_(online_params[name].detach(), alpha=1 - momentum)
    online_buffers = dict(online.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(online_buffers[name])


def flat_recipe(recipe: Recipe) -> dict[str, Any]:
    return flatten(recipe.to_dict())
