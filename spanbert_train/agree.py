"""Stopping every rank together when one rank's data fails its checks (issue 16).

The trainer learns from the step's all-reduce that some rank's next batch is bad, so every rank calls
`raise_on_every_rank` at the same step and none is left waiting in a collective for a rank that has gone.
"""

from __future__ import annotations

from typing import NoReturn

import torch.distributed as dist

from spanbert_data.shards import DatasetError


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
    from spanbert_train.train import TrainingError  # (spanbert_train.train imports this module)

    rank, (is_data, text) = next((r, f) for r, f in enumerate(found) if f is not None)
    raise (DatasetError if is_data else TrainingError)(f"{text} (found by rank {rank})")
