"""Distributed helpers with correct gradients.

Contrastive losses need every process's samples as negatives. The gather used here
(``_GatherWithGrad``) sums the incoming gradients over ranks in its backward (an all-reduce,
then each rank keeps its own rows), so gradients reach each rank's own samples from every
rank's loss terms. The raw ``torch.distributed.all_gather`` has no backward at all, and a
gather whose backward keeps only the local slice drops the cross-rank terms (a known pitfall of
several SSL code bases: their multi-GPU gradients differ from the one-GPU ones).
``torch.distributed.nn.functional.all_gather`` computes the same thing but is deprecated, and
on torch 2.14 a gloo process that used it aborts at exit in about one run of five.

Every rank computes the same loss on the gathered global batch; the engine then averages
parameter gradients over ranks, so a W-process step equals a 1-process step on the full batch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums each rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's rows
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably (identity on one process).

    Every rank must pass a tensor of the same shape (the engine shards batches evenly).
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x.contiguous())


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (for labels, indices, statistics)."""
    if not is_distributed() or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of parameter gradients over ranks (what DDP does, without its bucketing)."""
    if not is_distributed() or world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank so evaluations agree."""
    if not is_distributed() or world_size() == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's object on every rank."""
    if not is_distributed() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Tear the process group down once every rank is done with it.

    The barrier keeps a rank from destroying its group while a peer is still in a collective.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
