"""Data-parallel training under ``torchrun`` (DDP), shared by every trainer.

Launched by ``torchrun --nproc_per_node N python -m rbclib.launch ...``, each process trains
on its share of the global batch and the ranks keep identical weights:

- segmentation wraps its model in ``DistributedDataParallel`` (gradients reduced while the
  backward pass runs);
- the diffusion GANs and SSL call :func:`average_gradients` after each backward pass
  instead, because DDP's hooks do not cover the GANs' R1 penalty (a double backward through
  ``torch.autograd.grad``) nor the discriminator's two forward passes per step.

Rank 0 writes every file; at the end :func:`check_ranks_in_sync` proves the ranks agree and
writes ``ddp_sync.json``. Without ``torchrun`` (``WORLD_SIZE`` unset) everything here is a
no-op and training is bit-identical to a plain single-process run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from rbclib.core.files import write_json
from rbclib.core.training import pick_device

SYNC_FILE = "ddp_sync.json"


def distributed_info() -> tuple[int, int, bool]:
    """(rank, world size, is_distributed) from ``torchrun``'s environment.

    Returns
    -------
    tuple of (int, int, bool)
        ``RANK`` (default 0), ``WORLD_SIZE`` (default 1) and whether the world size exceeds 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, world > 1


def start_distributed(device: str | torch.device | None = None) -> tuple[int, int, bool, torch.device]:
    """Join ``torchrun``'s process group when there is one (nccl on CUDA, gloo elsewhere).

    Parameters
    ----------
    device : str or torch.device, optional
        The device asked for, used when not under CUDA DDP.

    Returns
    -------
    tuple of (int, int, bool, torch.device)
        Rank, world size, is_distributed and this rank's device: its own GPU (``LOCAL_RANK``)
        under CUDA DDP, else :func:`rbclib.core.training.pick_device` of ``device``.
    """
    rank, world, distributed = distributed_info()
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if distributed and torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        return rank, world, distributed, dev
    return rank, world, distributed, pick_device(device)


def rank_share(batch_size: int, world: int) -> int:
    """Samples per rank of a global batch.

    Parameters
    ----------
    batch_size : int
        The global batch size.
    world : int
        The number of ranks.

    Returns
    -------
    int
        ``batch_size // world``.

    Raises
    ------
    ValueError
        ``world`` does not divide ``batch_size``.
    """
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} DDP processes")
    return batch_size // world


def average_gradients(parameters: Iterable[nn.Parameter], world: int) -> None:
    """Replace each gradient by its mean over the ranks (one flat all-reduce).

    Parameters
    ----------
    parameters : iterable of torch.nn.Parameter
        The parameters; those without a gradient are skipped.
    world : int
        The number of ranks; 1 or less is a no-op.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, queues) to every rank.

    Parameters
    ----------
    module : torch.nn.Module
        The module whose buffers are broadcast in place.
    """
    for buf in module.buffers():
        torch.distributed.broadcast(buf, src=0)


@torch.no_grad()
def gather_from_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's ``t`` concatenated in rank order.

    Parameters
    ----------
    t : torch.Tensor
        (B, ...) this rank's tensor, the same shape on every rank.
    world : int
        The number of ranks.

    Returns
    -------
    torch.Tensor
        (world * B, ...) in rank order; ``t`` itself when not distributed.
    """
    if world <= 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: Sequence[float], device: torch.device, world: int) -> np.ndarray:
    """The mean of ``values`` over the ranks.

    Parameters
    ----------
    values : sequence of float
        One number per logged quantity, in the same order on every rank.
    device : torch.device
        Where the all-reduce runs (the rank's device).
    world : int
        The number of ranks.

    Returns
    -------
    numpy.ndarray
        (len(values),) float64 means.
    """
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(t)
        t /= world
    return t.cpu().numpy()


def check_ranks_in_sync(modules: Sequence[nn.Module], out_dir: str | Path, rank: int, world: int) -> float:
    """Compare every rank's weights and buffers with rank 0's; rank 0 writes ``ddp_sync.json``.

    Parameters
    ----------
    modules : sequence of torch.nn.Module
        The trained modules, the same on every rank.
    out_dir : str or pathlib.Path
        Folder of ``ddp_sync.json`` (world size, largest absolute difference).
    rank : int
        This process's rank.
    world : int
        The number of ranks.

    Returns
    -------
    float
        The largest absolute difference of any weight or buffer from rank 0's (0.0).

    Raises
    ------
    RuntimeError
        The ranks diverged.
    """
    dev = next(modules[0].parameters()).device
    diff = torch.zeros(1, dtype=torch.float64, device=dev)
    for module in modules:
        for p in module.state_dict().values():
            ref = p.detach().clone().contiguous()
            torch.distributed.broadcast(ref, src=0)
            if p.is_floating_point():
                diff = torch.maximum(diff, (p.detach().double() - ref.double()).abs().max().reshape(1))
            elif not torch.equal(p.detach(), ref):
                diff = torch.maximum(diff, torch.ones_like(diff))
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    max_diff = float(diff.item())
    if rank == 0:
        write_json(Path(out_dir) / SYNC_FILE, {"world_size": world, "max_abs_weight_diff": max_diff})
    if max_diff > 0:
        raise RuntimeError(f"DDP ranks ended with different weights (max |diff| = {max_diff})")
    return max_diff


def barrier(distributed: bool) -> None:
    """Wait for every rank (no-op when not distributed).

    Parameters
    ----------
    distributed : bool
        Whether this run has several ranks.
    """
    if distributed:
        torch.distributed.barrier()
