"""DistributedDataParallel set-up for the Trainer (under `torchrun --nproc_per_node N`).

Each rank takes every N-th batch of the same seeded batch list, cut to a multiple of N first (DDP all-reduces
every step, so a rank with one batch more would wait forever at its last one). Losses gather the embeddings of
every rank (pytorch-metric-learning's wrappers), so pairs span the global batch. DDP wraps the whole training
step, not the bare model, so it sees every parameter a step uses (head losses, CSA's deep supervision, CIA).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

from core.losses import DMLCriterion


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group (nccl on CUDA, gloo on CPU): (rank, world size, this rank's device)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def gathering(criterion: DMLCriterion) -> DMLCriterion:
    """The criterion with its loss and miner seeing the embeddings of every rank."""
    return DMLCriterion(DistributedLossWrapper(criterion.loss),
                        DistributedMinerWrapper(criterion.miner) if criterion.miner else None)


def wrap(training_step: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return torch.nn.parallel.DistributedDataParallel(
        training_step, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)


def shard(batches: list, tags: list, rank: int, world: int) -> tuple[list, list]:
    """This rank's batches and their tags: the same seeded order everywhere, disjoint and equally long."""
    if world > 1:
        keep = len(batches) // world * world
        batches, tags = batches[:keep], tags[:keep]
    return batches[rank::world], tags[rank::world]


def broadcast(module: torch.nn.Module) -> None:
    """Rank 0's parameters to every rank (e.g. a projection started from the train features on rank 0)."""
    for p in module.parameters():
        dist.broadcast(p.data, 0)


def barrier() -> None:
    dist.barrier()
