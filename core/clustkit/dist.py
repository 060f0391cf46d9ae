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

The whole-dataset steps (feature extraction, k-means, kNN) instead keep the data split: each rank
holds a contiguous shard of the rows (:class:`RowShards`), and the collectives below exchange
only per-cluster sums, a few scalars or one shard at a time. Every helper is the identity on one
process, so single-process code runs the same arithmetic without a process group.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


def launched_world_size() -> int:
    """How many processes torchrun started for this run (its ``WORLD_SIZE``; 1 without torchrun),
    readable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if is_distributed() or launched_world_size() <= 1:
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums each rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
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
    """Concatenate ``x`` (the same shape on every rank) along dim 0 (for labels, indices,
    statistics); through the communication device when ``x`` is elsewhere (a CPU tensor under NCCL)."""
    if not is_distributed() or world_size() == 1:
        return x
    dev = _comm_device()
    parts = [torch.empty(x.shape, dtype=x.dtype, device=dev) for _ in range(world_size())]
    dist.all_gather(parts, x.to(dev).contiguous())
    return torch.cat(parts, dim=0).to(x.device)


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


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (small objects: lists of indices, flags)."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- row shards


def shard_range(n: int, *, align: int = 1, world: int | None = None, of_rank: int | None = None) -> range:
    """Rows ``[start, stop)`` of ``n`` that rank ``of_rank`` (default: this one) holds: contiguous, in rank order.

    The rows are cut into blocks of ``align`` (the last one may be short) and the blocks split as
    ``torch.tensor_split`` does (the first ranks take one block more), so a shard starts on a
    block boundary: with ``align`` = the evaluation batch size, every rank's batches are the
    batches a single process would run.
    """
    world = world_size() if world is None else world
    r_ = rank() if of_rank is None else of_rank
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    blocks = -(-n // align)
    q, r = divmod(blocks, world)
    first = r_ * q + min(r_, r)
    last = first + q + (1 if r_ < r else 0)
    return range(min(n, first * align), min(n, last * align))


def _comm_device() -> torch.device:
    """Where collective tensors must live: the process's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(t: torch.Tensor, op: Any, receive: bool = True) -> torch.Tensor:
    """Run ``op`` (in place) on ``t``, through a copy on the communication device when needed
    (``receive=False``: ``t`` is only sent, so nothing is copied back)."""
    dev = _comm_device()
    if t.device == dev and t.is_contiguous():
        op(t)
        return t
    buf = t.to(dev).contiguous()
    op(buf)
    if receive:
        t.copy_(buf)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place (every rank receives the same bits); returns ``t``."""
    if not is_distributed() or world_size() == 1:
        return t
    return _collective(t, dist.all_reduce)


def broadcast_tensor(t: torch.Tensor, src: int) -> torch.Tensor:
    """Rank ``src``'s ``t`` into every rank's ``t`` (same shape and dtype everywhere), in place."""
    if not is_distributed() or world_size() == 1:
        return t
    return _collective(t, lambda buf: dist.broadcast(buf, src=src), receive=rank() != src)


def all_gather_values(t: torch.Tensor) -> torch.Tensor:
    """``world x *t.shape``: every rank's small tensor ``t`` (same shape everywhere), in rank order."""
    return gather_no_grad(t[None])


def all_gather_sizes(n_local: int) -> list[int]:
    """Every rank's row count, in rank order (the shard layout when only each rank knows its own)."""
    return [int(v) for v in all_gather_values(torch.tensor([n_local], dtype=torch.long)).flatten().tolist()]


def shard_blocks(x_local: torch.Tensor, sizes: Sequence[int],
                 out: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(rank, offset, rows)`` for each rank's shard in turn, broadcast to every rank.

    A rank holds its own shard plus one buffer the size of the largest other shard: what lets
    the kNN search visit every row without any rank ever holding the whole matrix. Ranks with
    no rows are skipped. The block yielded for this rank is ``x_local`` itself; any other block
    is overwritten by the next one, so copy what you keep. With ``out`` (sum(sizes) rows) each
    shard is received straight into its slice of ``out`` instead.
    """
    if len(sizes) == 1:
        if out is not None:
            out.copy_(x_local)
        yield 0, 0, x_local
        return
    me, offset = rank(), 0
    others = 0 if out is not None else max((n for r, n in enumerate(sizes) if r != me), default=0)
    buf = torch.empty((others, *x_local.shape[1:]), dtype=x_local.dtype, device=x_local.device)
    for r, n in enumerate(sizes):
        if n:
            if out is not None:
                block = out[offset : offset + n]
                if r == me:
                    block.copy_(x_local)
            else:
                block = x_local if r == me else buf[:n]
            broadcast_tensor(block, src=r)
            yield r, offset, block
        offset += n


def all_gather_rows(x_local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's rows (rank r holds ``sizes[r]`` of them, shards may be unequal).

    Each shard is broadcast straight into its slice of the output, so no padding and no second
    copy of the whole matrix is made; on one process this returns ``x_local`` itself.
    """
    if len(sizes) == 1:
        return x_local
    out = torch.empty((sum(sizes), *x_local.shape[1:]), dtype=x_local.dtype, device=x_local.device)
    for _ in shard_blocks(x_local, sizes, out=out):
        pass
    return out


@dataclass(frozen=True)
class RowShards:
    """How the rows of an N x D matrix are split over ranks: rank r holds rows
    ``[offsets[r], offsets[r] + sizes[r])``, contiguous and in rank order (sizes may differ).

    The methods are the collectives of the sharded whole-dataset algorithms; with one shard they
    are the identity (no process group needed), which is how the single-process k-means runs the
    very same code. ``RowShards.single(n)`` is that one-shard layout, even inside a multi-process
    run (a rank clustering data it holds entirely).
    """

    sizes: tuple[int, ...]
    rank: int = 0

    @classmethod
    def single(cls, n: int) -> RowShards:
        return cls((n,), 0)

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def n_total(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.sizes:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def offset(self) -> int:
        return self.offsets[self.rank]

    @property
    def n_local(self) -> int:
        return self.sizes[self.rank]

    @property
    def rows(self) -> range:
        """This rank's rows of the whole matrix."""
        return range(self.offset, self.offset + self.n_local)

    def locate(self, i: int) -> tuple[int, int]:
        """(rank holding global row ``i``, its row within that rank's shard)."""
        if not 0 <= i < self.n_total:
            raise IndexError(f"row {i} is outside 0..{self.n_total - 1}")
        r = bisect.bisect_right(self.offsets, i) - 1  # past empty shards, which share the next offset
        return r, i - self.offsets[r]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the shards (in place)."""
        return all_reduce_sum(t) if self.world > 1 else t

    def sum_float(self, value: float) -> float:
        """A Python float summed over the shards (in float64)."""
        if self.world == 1:
            return value
        return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64)).item())

    def values(self, t: torch.Tensor) -> torch.Tensor:
        """``world x *t.shape``: each shard's small tensor ``t``."""
        return all_gather_values(t) if self.world > 1 else t[None]

    def share_rows(self, x_local: torch.Tensor, owners: Sequence[int], local: torch.Tensor) -> torch.Tensor:
        """``m x D`` on every rank: row ``local[j]`` of rank ``owners[j]``'s shard, for each j.

        ``local[j]`` need only be right on rank ``owners[j]``. The rows travel as one sum over
        ranks of a matrix that is zero except in the rows a rank owns: O(m x D) values, and
        adding zeros is exact.
        """
        if self.world == 1:
            return x_local[local]
        mine = [j for j, o in enumerate(owners) if o == self.rank]
        out = x_local.new_zeros((len(owners), *x_local.shape[1:]))
        if mine:
            sel = torch.tensor(mine, device=x_local.device)
            out[sel] = x_local[local.to(x_local.device)[sel]]
        return all_reduce_sum(out)

    def gather(self, x_local: torch.Tensor) -> torch.Tensor:
        """Every shard's rows concatenated, on every rank (labels: N ints)."""
        return all_gather_rows(x_local, self.sizes)


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
