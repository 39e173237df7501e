"""The ranks of a run: joining and leaving torchrun's process group, and stopping every rank together.

`setup_distributed` is the one entry for training, evaluation and QA fine-tuning alike: RANK, WORLD_SIZE and
LOCAL_RANK from the environment (a single process when they are not set), nccl on CUDA, gloo on CPU.

`raise_on_every_rank` (issue 16): the trainer learns from the step's all-reduce that some rank's next batch is
bad, so every rank calls it at the same step and none is left waiting in a collective for a rank that has gone.

Leaving is the delicate part. A gloo process group owns C++ worker threads, and a worker may drop the last
reference to a finished collective (say, the `all_gather_object` that tells every rank about bad data) after the
Python caller has moved on; dropping it touches Python objects, so the worker needs the GIL. If the interpreter is
already finalising at that moment, CPython ends the worker with `pthread_exit`, whose unwinding through a C++
destructor calls `std::terminate`: the rank dies with SIGABRT ("terminate called without an active exception")
after printing its one-line error. `shutdown_distributed` therefore frees the group, and with it joins its
threads, while the interpreter is fully alive, and `setup_distributed` makes sure nothing pins the group first.
"""

from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

# DDP imports torch.distributed.nn.functional on first use; its functions default to `group=group.WORLD`, evaluated
# at import. Imported after init_process_group, those defaults would hold the group for the rest of the process, so
# that destroy_process_group could never free it (nor join its threads). Imported here, before any group exists.
import torch.distributed.nn.functional  # noqa: F401

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


_group: weakref.ref | None = None  # the process group this module joined, to check that leaving frees it


def setup_distributed() -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); pick this rank's device."""
    global _group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _group = weakref.ref(dist.group.WORLD)
    return DistInfo(rank, world, local_rank, device)


def shutdown_distributed() -> bool:
    """Leave the process group and free it now (its threads joined), not at interpreter exit; call it after
    dropping every DDP wrapper. Returns whether the group is gone (False: something still holds it)."""
    global _group
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # DDP and autograd keep reference cycles: collect them while the interpreter is whole
    freed = _group is None or _group() is None
    if freed:
        _group = None
    return freed


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
