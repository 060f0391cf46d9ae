"""Building a run from a validated recipe: data, components, network, optimizer and schedule.

:func:`build_run` calls the builders below in the order the parts depend on each other; each
builder is short and does one thing. Components are built by their plugins' factories with a
:class:`BuildContext` that grows as the run takes shape (the data's shape after the dataset,
the feature size after the backbone, the view names after the view generator), then checked
and bound by role (:mod:`clustkit.engine.components`).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from clustkit import dist
from clustkit.data.memory import auto_workers
from clustkit.engine.batches import BatchSource, steps_per_epoch
from clustkit.engine.checkpoint import RESUMABLE_KEYS, Checkpointer
from clustkit.engine.components import RunComponents, organise
from clustkit.engine.context import BuildContext, RunContext
from clustkit.engine.network import Network, momentum_copy
from clustkit.engine.plugin_errors import describe_factory_failure
from clustkit.engine.run_folder import CHECKPOINT
from clustkit.engine.state import RunState
from clustkit.errors import RecipeError, UserError
from clustkit.nn.trunk import FeatureTrunk
from clustkit.plugin_system.manager import PluginSet, run_hooks
from clustkit.plugin_system.registry import ComponentSpec
from clustkit.recipe.schema import Recipe


def pick_device(name: str) -> torch.device:
    """The run's device. Under torchrun, ``cuda`` (or ``auto`` on a GPU machine) means this process's
    own GPU, ``cuda:$LOCAL_RANK``: every node numbers its processes from 0, so the global rank would
    name GPUs a node does not have."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device is {name!r} but no CUDA GPU is visible; use device = \"auto\" or \"cpu\".")
    if name == "cuda" and dist.launched_world_size() > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL and the default CUDA stream follow the current device
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_component(plugins: PluginSet, kind: str, cfg: Any, ctx: BuildContext) -> tuple[ComponentSpec, Any]:
    """One component, by its plugin's factory: (its registration, the object). A factory's ValueError
    is an error in the recipe naming the key; any other exception a ``PluginError`` naming the plugin."""
    spec = plugins.registry.get(kind, cfg.name)
    assert spec is not None, "the recipe loader checked every component name"
    factory = spec.factory_callable()
    try:
        return spec, factory(cfg, ctx)
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise RecipeError(ctx.recipe.path, ctx.key, f"{kind} {cfg.name!r} could not be built: {exc}") from None
    except Exception as exc:
        raise describe_factory_failure(exc, spec, ctx.key, plugins) from exc


def batch_source(recipe: Recipe, dataset: Any, seed: int, device: torch.device) -> BatchSource:
    """Batches of ``dataset`` as ``[run]`` sets them (the global batch split over ranks)."""
    run = recipe.run
    workers = run.num_workers
    if workers == "auto":
        workers = auto_workers(in_memory=getattr(dataset, "images", None) is not None)
    return BatchSource(dataset, run.batch_size // dist.world_size() * dist.world_size(), run.eval_batch_size,
                       run.drop_last, seed, device, workers, run.max_unreadable)


def build_data(recipe: Recipe, plugins: PluginSet,
               ctx: BuildContext) -> tuple[Any, dict[str, BatchSource], BuildContext]:
    """The dataset of ``[data]``, the batches of each pass of an epoch (``[unlabeled]`` first, when
    the recipe has one), and the build context with the data's shape filled in."""
    r = recipe
    _, ds = build_component(plugins, "dataset", r.data, replace(ctx, key="data"))
    n_clusters = r.run.n_clusters or ds.num_classes or 0
    if n_clusters < 2:
        raise RecipeError(r.path, "run.n_clusters", "is required for a dataset without labels (how many clusters?).")
    if len(ds) < r.run.batch_size and r.run.drop_last:
        raise RecipeError(r.path, "run.batch_size", f"is {r.run.batch_size} but the dataset has only {len(ds)} images.")
    ctx = replace(ctx, n_items=len(ds), in_channels=ds.channels, image_size=tuple(ds.image_size), n_clusters=n_clusters)
    sources = {"data": batch_source(r, ds, r.run.seed, ctx.device)}
    if r.unlabeled is not None:
        sources = {"unlabeled": unlabeled_source(recipe, plugins, ctx, ds), **sources}
    return ds, sources, ctx


def unlabeled_source(recipe: Recipe, plugins: PluginSet, ctx: BuildContext, data: Any) -> BatchSource:
    """The items of the [unlabeled] pass (e.g. STL-10's 100k unlabelled images), batched like [data]."""
    r = recipe
    _, extra = build_component(plugins, "dataset", r.unlabeled, replace(ctx, key="unlabeled"))
    if extra.channels != data.channels or tuple(extra.image_size) != tuple(data.image_size):
        raise RecipeError(r.path, "unlabeled", f"holds {extra.channels}-channel {tuple(extra.image_size)} images but "
                          f"[data] holds {data.channels}-channel {tuple(data.image_size)} ones; one network sees both, "
                          "so set image_size / channels to match.")
    source = batch_source(r, extra, r.run.seed + 7919, ctx.device)
    if source.steps_per_epoch() == 0:
        raise RecipeError(r.path, "unlabeled", f"has {len(extra)} images, fewer than run.batch_size "
                          f"({r.run.batch_size}).")
    return source


def build_components(recipe: Recipe, plugins: PluginSet, ctx: BuildContext) -> tuple[RunComponents, BuildContext]:
    """Views, losses (weight > 0: a removed term costs nothing), grouping, evaluation and refine, in
    recipe order, checked and bound by role."""
    built: dict[str, tuple[ComponentSpec, Any]] = {}
    for key, kind, cfg in recipe.components:
        if kind in ("dataset", "backbone", "head") or (kind == "loss" and cfg.weight == 0):
            continue
        built[key] = build_component(plugins, kind, cfg, replace(ctx, key=key))
        if kind == "views":  # losses check their view pairs against these
            ctx = replace(ctx, view_names=tuple(getattr(built[key][1], "view_names", ())))
    return organise(built), ctx


def build_network(recipe: Recipe, backbone: torch.nn.Module, heads: dict[str, torch.nn.Module],
                  components: RunComponents, ctx: BuildContext) -> tuple[Network, Network | None]:
    """The backbone with the recipe's heads and those its components build (``build_heads``, in
    recipe order), and its momentum copy."""
    heads = dict(heads)
    for builder in components.head_builders:
        contribution = builder.call(in_dim=ctx.backbone_dim, ctx=replace(ctx, key=builder.key))
        for name, module in (contribution or {}).items():
            if name in heads and heads[name] is not module:
                raise RecipeError(recipe.path, builder.key, f"adds a head named {name!r}, which the network already "
                                  f"has (a [heads.{name}] or another component's); rename one of them.")
            heads[name] = module
    model = Network(backbone, heads).to(ctx.device)
    if recipe.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    momentum = momentum_copy(model, recipe.momentum.heads) if recipe.momentum is not None else None
    if recipe.run.compile:  # after the momentum copy, so that each network compiles its own backbone
        for net in (model, momentum):
            if net is not None:
                net.backbone.compile()
    if dist.world_size() > 1:  # every rank starts from rank 0's weights
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, src=0)
        if momentum is not None:
            momentum.load_state_dict({k: v for k, v in model.state_dict().items() if k in momentum.state_dict()})
    return model, momentum


def _check_input_norm(recipe: Recipe, backbone: torch.nn.Module) -> None:
    """A backbone that normalises its own input (pretrained weights) and views that normalise too
    would normalise twice: say so instead of training on doubly shifted images."""
    views = getattr(recipe.views, "normalize", None)
    if getattr(backbone, "normalizes_input", False) and views not in (None, False, "none"):
        raise RecipeError(recipe.path, "views.normalize", f"is {views!r}, but the backbone already normalises its "
                          "input with the pretrained model's mean/std (backbone.input_norm, \"auto\" with weights): "
                          "set views.normalize = false, or backbone.input_norm = \"none\" to keep the views' own.")


def build_optimizer(recipe: Recipe, model: Network) -> torch.optim.Optimizer:
    """``[optimizer]`` over the trainable parameters, one group per ``lr_mult`` prefix."""
    o = recipe.optimizer
    lr = o.lr * (recipe.run.batch_size / o.lr_scale_batch if o.lr_scale_batch else 1.0)
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            mult = next((m for prefix, m in o.lr_mult.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(mult, []).append(p)
    params = [{"params": ps, "lr": lr * m, "lr_mult": m} for m, ps in groups.items()]
    if not params:  # nothing trains: only a recipe of 0 epochs (k-means on frozen features) gets here
        if recipe.run.epochs:
            raise RecipeError(recipe.path, "run.epochs", f"is {recipe.run.epochs}, but nothing in the network "
                              "trains (a frozen backbone and no heads): add heads and losses, or set run.epochs = 0 "
                              "to evaluate the frozen features as they are.")
        params = [{"params": [torch.nn.Parameter(torch.zeros(0))], "lr": lr, "lr_mult": 1.0}]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=o.betas, weight_decay=o.weight_decay)


def build_schedule(recipe: Recipe, optimizer: torch.optim.Optimizer, epoch_steps: int,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``[schedule]``: linear warm-up over ``warmup_epochs``, then constant or cosine to ``min_lr``."""
    s = recipe.schedule
    warm = int(s.warmup_epochs * epoch_steps)
    total = max(1, total_steps)
    base = recipe.optimizer.lr
    floor = s.min_lr / base if base else 0.0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if s.name == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_run(recipe: Recipe, plugins: PluginSet, out_dir: Path | None, started: float | None = None) -> RunState:
    """Everything a run needs, ready to train: the returned state (and its ``ctx``) has no part left to fill."""
    r = recipe
    device = pick_device(r.run.device)
    dist.init_from_env(device.type)
    if r.run.batch_size % dist.world_size():
        raise RecipeError(r.path, "run.batch_size",
                          f"must be divisible by the number of processes ({dist.world_size()}).")
    seed_everything(r.run.seed)
    if r.run.deterministic:
        torch.use_deterministic_algorithms(True)
    ctx = BuildContext(r, "data", device)
    dataset, sources, ctx = build_data(r, plugins, ctx)
    _, backbone = build_component(plugins, "backbone", r.backbone, replace(ctx, key="backbone"))
    _check_input_norm(r, backbone)
    if r.features is not None:  # the heads read an MLP trunk on the frozen backbone's (cached) features
        backbone = FeatureTrunk(backbone, list(r.features.trunk), r.features.trunk_dim, r.features.normalize)
    ctx = replace(ctx, backbone_dim=int(backbone.out_dim))
    heads = {k: build_component(plugins, "head", cfg, replace(ctx, key=f"heads.{k}"))[1] for k, cfg in r.heads.items()}
    components, ctx = build_components(r, plugins, ctx)
    model, momentum = build_network(r, backbone, heads, components, ctx)
    optimizer = build_optimizer(r, model)
    epoch_steps = steps_per_epoch(sources)
    total_steps = epoch_steps * r.run.epochs
    run = RunState(
        recipe=r, plugins=plugins, components=components, hooks=run_hooks(plugins, components.by_key),
        optimizer=optimizer, scheduler=build_schedule(r, optimizer, epoch_steps, total_steps), sources=sources,
        console=Console(stderr=True),
        checkpointer=Checkpointer(out_dir / CHECKPOINT if out_dir else None, r.fingerprint(RESUMABLE_KEYS),
                                  r.run.keep_checkpoints),
        total_steps=total_steps, started=time.perf_counter() if started is None else started)
    run.ctx = RunContext(recipe=r, device=device, dataset=dataset, n_clusters=ctx.n_clusters,
                         in_channels=ctx.in_channels, image_size=ctx.image_size, backbone_dim=ctx.backbone_dim,
                         model=model, _momentum=momentum, _run=run)
    return run
