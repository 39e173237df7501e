"""The ranks of a run: joining torchrun's process group, and stopping every rank together.

`setup_distributed` is the one entry for training, evaluation and QA fine-tuning alike: RANK, WORLD_SIZE and
LOCAL_RANK from the environment (a single process when they are not set), nccl on CUDA, gloo on CPU.

`raise_on_every_rank` (issue 16): the trainer learns from the step's all-reduce that some rank's next batch is
bad, so every rank calls it at the same step and none is left waiting in a collective for a rank that has gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from spanbert_data.errors import DatasetError
from spanbert_train.errors import TrainingError


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def raise_on_every_rank(mine: BaseException | None, world: int) -> NoReturn:
    """Raise on this rank the error some rank found: its own if it found one, else the lowest rank's message,
    tagged with that rank, so that every rank's log names the shard. One all_gather_object, on failure only."""
    report = None if mine is None else (isinstance(mine, DatasetError), str(mine))
    found = [report]
    if world > 1:
        found = [None] * world
        dist.all_gather_object(found, report)
    if mine is not None:
        raise mine
    rank, (is_data, text) = next((r, f) for r, f in enumerate(found) if f is not None)
    raise (DatasetError if is_data else TrainingError)(f"{text} (found by rank {rank})")
