"""Streaming the packed shards (docs/FORMAT.md) into per-rank batches, deterministically.

A `Dataset` opens every shard of a manifest (spanbert_train/shard.py: memory-mapped, zero-copy NumPy
columns, gathered with fancy indexing, never a Python loop over tokens); a dataset in object storage has its
shards downloaded into a local cache ahead of need (spanbert_train/remote_data.py). `open_blend` opens the
datasets of a run (one, or several mixed by weight: spanbert_train/blend.py).

Order (DESIGN §8): training epoch e of a dataset reads mask epoch e mod K, in the order of a permutation of
that epoch's rows seeded by (seed, e). Alone, global batch b of epoch e is perm[b·G:(b+1)·G]; in a blend, the
schedule (spanbert_train/schedule.py) takes each dataset's rows in that same order. A global batch is split
contiguously over the ranks, and each rank's part contiguously into micro-batches. The sequence of global
batches therefore depends only on (seed, G, the weights): a run resumed at global batch b on any number of
ranks with the same G continues the same sample sequence.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from spanbert_data.errors import DatasetError
from spanbert_data.location import Location, is_url
from spanbert_data.shards import load_manifest
from spanbert_train.batch import make_batch
from spanbert_train.blend import Blend, BlendOrder, epoch_order
from spanbert_train.errors import ConfigError
from spanbert_train.remote_data import DownloadAhead, Storage, remote_shards, size_cache
from spanbert_train.shard import LIST_COLUMNS, Shard
from spanbert_train.verify_ahead import VerifyAhead
from spanbert_train.weights import blend_weights

__all__ = ["Dataset", "StepData", "TrainLoader", "check_batch_geometry", "epoch_order", "open_blend", "to_batch"]


class Dataset:
    """A dataset directory: the manifest plus every shard of every mask epoch and of valid/, opened and checked.

    verify='sha256' (the default) also checks each shard's content hash before its first row is used
    (lazily, see Shard); 'size' trusts the storage and skips it. Rows are structurally checked either way."""

    def __init__(self, root, verify: str = "sha256", storage=None, size: bool = True):
        """`root`: a dataset directory, or a URL (or a `spanbert_data.location.Location`) of one in object storage,
        whose shards are downloaded into a local cache ahead of need (`storage`: a spanbert_train.remote_data.Storage,
        default: the default cache directory and limit). `size=False` leaves sizing that cache to the caller
        (open_blend sizes one cache for all the datasets of a run)."""
        self.root = Location.of(root, storage.options if storage is not None else None)
        self.manifest = load_manifest(self.root)
        self.cache = None  # the ShardCache of a remote dataset
        m = self.manifest
        try:
            self.max_seq_len = int(m["max_seq_len"])
            self.vocab_size = int(m["tokenizer"]["vocab_size"])
            self.special_ids = dict(m["tokenizer"]["special_ids"])
            self.mask_epochs = int(m["mask_epochs"])
            train = m["shards"]["train"]
            valid = m["shards"].get("valid", [])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{self.root / 'manifest.json'}: missing or invalid field {e}; rebuild") from None
        if self.root.local is not None:  # memory-mapped where they are
            shard = functools.partial(Shard, self.root.local, max_seq_len=self.max_seq_len, verify=verify,
                                      vocab_size=self.vocab_size)  # fmt: skip
        else:  # object storage: shards open lazily, once downloaded and verified (spanbert_train.remote_data)
            shard = remote_shards(self, storage, verify)
        self.epochs: list[list[Shard]] = [[] for _ in range(self.mask_epochs)]
        for entry in train:
            epoch = int(entry["epoch"])
            if not 0 <= epoch < self.mask_epochs:
                raise DatasetError(f"{self.root / 'manifest.json'}: shard {entry['path']} has epoch {epoch}")
            self.epochs[epoch].append(shard(entry))
        for k, shards in enumerate(self.epochs):
            if sum(s.rows for s in shards) == 0:
                raise DatasetError(f"{self.root / 'manifest.json'}: mask epoch {k} has no training rows")
        self.valid = [shard(entry) for entry in valid]
        if self.cache is not None and size:
            size_cache([(self, True, False)], storage)

    def close(self) -> None:
        """Let go of a remote dataset's cache (its holds and downloads in flight); nothing to do for local data."""
        if self.cache is not None:
            self.cache.close()

    def rows(self, mask_epoch: int) -> int:
        return sum(s.rows for s in self.epochs[mask_epoch])



def open_blend(paths: list, weights: list | None = None, verify: str = "sha256", storage: Storage | None = None,
               for_training: bool = True) -> Blend:  # fmt: skip
    """Open the datasets of a run (directories or URLs) as a Blend of their integer weights (spanbert_train.weights;
    default equal). The remote ones share one cache (`storage`, default: the default directory and limit), sized
    once for all of them: each dataset's budget (one mask epoch of it when it gives training rows, two where a
    global batch can hold the end of one epoch and the start of the next, plus its validation shards) is added up
    within the limit (spanbert_train.remote_data.size_cache). `for_training=False` (evaluation) sizes every dataset
    for one mask epoch, whatever its weight."""
    ints = blend_weights(list(weights or []), len(paths))
    storage = storage or Storage()
    datasets: list[Dataset] = []
    try:
        for path in paths:
            datasets.append(Dataset(path, verify=verify, storage=storage if is_url(str(path)) else None, size=False))
        blend = Blend(datasets, ints, [str(p) for p in paths])
        mixed = sum(w > 0 for w in ints) > 1  # then a batch can straddle a dataset's epochs
        remote = [(ds, bool(w) or not for_training, mixed and bool(w) and for_training)
                  for ds, w in zip(datasets, ints, strict=True) if ds.cache is not None]  # fmt: skip
        if remote:
            size_cache(remote, storage)
    except BaseException:
        for ds in datasets:
            ds.close()
        raise
    return blend


def to_batch(cols: dict):
    """Turn gathered columns into the model's Batch (spanbert_train.batch.make_batch)."""
    return make_batch(cols["input_ids"], **{name: cols[name] for name in LIST_COLUMNS})


@dataclass
class StepData:
    """Everything one rank needs for one optimizer step, plus global-batch totals known from the data."""

    epoch: int  # training epoch of the (first) dataset at this step
    index: int  # global batch within that epoch (a single dataset); in a blend, its rows given in the epoch // G
    micro_batches: list  # this rank's Batches, in order
    mlm_targets: int  # MLM targets of the GLOBAL batch (all ranks, all micro-batches): SPEC §4's divisor
    sbo_targets: int  # SBO targets of the global batch
    tokens: int  # non-padding tokens of the global batch
    batch: int = 0  # the global batch: steps' worth of data before this one
    rows_by_dataset: list[int] = field(default_factory=list)  # rows each dataset has given, this batch included


def check_batch_geometry(data, global_batch: int, micro_batch: int, world: int) -> None:
    """Raise ConfigError unless the global batch splits evenly over ranks and micro-batches and fits every epoch of
    every dataset that gives rows (`data`: a Dataset or a Blend)."""
    if global_batch % (world * micro_batch):
        raise ConfigError(
            f"data.global_batch_size ({global_batch}) must be a multiple of ranks × data.micro_batch "
            f"({world} × {micro_batch})"
        )
    pairs = zip(data.datasets, data.weights, strict=True) if isinstance(data, Blend) else [(data, 1)]
    for dataset, weight in pairs:
        for k in range(dataset.mask_epochs if weight else 0):
            if dataset.rows(k) < global_batch:
                raise ConfigError(
                    f"data.global_batch_size ({global_batch}) exceeds the {dataset.rows(k)} rows of mask epoch {k} "
                    f"of {dataset.root}"
                )


class TrainLoader:
    """Endless per-rank stream of StepData from global batch `start` on, prefetched in a thread.

    `data`: a Dataset, or a Blend of several (spanbert_train.blend). `start`: the global batch to begin with (the
    steps trained so far), or a single dataset's (epoch, batch within it). Every rank computes the whole global
    batch's target counts from the offsets alone (cheap), so the loss normalisation of SPEC §4 needs no
    collective. `pin_memory` pins the batches for async H2D copies. A second thread (spanbert_train.verify_ahead,
    or remote_data.DownloadAhead when a dataset is in object storage) checks the shards this rank will read ahead
    of need; a bad shard or row ends the stream with a DatasetError, which `peek_error` shows one step early (the
    trainer uses it to stop every rank at the same step). `check_rows=False` skips the row checks (benchmarks only).
    """

    def __init__(self, data, global_batch: int, micro_batch: int, rank: int, world: int, seed: int,
                 start: int | tuple[int, int] = 0, prefetch: int = 2, pin_memory: bool = False,
                 check_rows: bool = True):  # fmt: skip
        self.blend = data if isinstance(data, Blend) else Blend([data])
        check_batch_geometry(self.blend, global_batch, micro_batch, world)
        self.G, self.micro, self.rank, self.world, self.seed = global_batch, micro_batch, rank, world, seed
        self.order = BlendOrder(self.blend, global_batch, seed)
        self.source = self.blend.source
        self.position = self.order.batch_of(*start) if isinstance(start, tuple) else int(start)  # the next batch
        self.pin_memory, self.check_rows = pin_memory, check_rows
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = None  # the next queue item, taken early by peek_error()
        if any(ds.cache is not None for ds in self.blend.datasets):  # object storage: download ahead, let go after
            self.verifier = DownloadAhead(self)
        else:
            self.verifier = VerifyAhead(self.blend.training_shards(), self.blend.valid, self.shards_in_order_of_use,
                                        self.position, self.order.chunk_end, self._stop)  # fmt: skip

    def _mine(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of global batch rows (the last axis)."""
        per_rank = self.G // self.world
        return rows[..., self.rank * per_rank : (self.rank + 1) * per_rank]

    def shards_in_order_of_use(self, first: int, end: int | None = None, every_rank: bool = False) -> list[Shard]:
        """The shards this rank (or every rank) reads in global batches first .. end-1, in order of first use
        (`end` default: the end of the verifier's chunk, BlendOrder.chunk_end)."""
        end = self.order.chunk_end(first) if end is None else end
        seen, found = np.zeros(len(self.source.shards), dtype=bool), []
        for _, rows in self.order.blocks(first, end):
            shard, _ = self.source._locate((rows if every_rank else self._mine(rows)).ravel())
            _, first_use = np.unique(shard, return_index=True)
            for s in shard[np.sort(first_use)]:
                if not seen[s]:
                    seen[s] = True
                    found.append(self.source.shards[s])
        return found

    def make_step(self, batch: int) -> StepData:
        """Build the StepData of global batch `batch` for this rank (a pure function of it)."""
        rows = self.order.rows(batch, batch + 1)[0]
        mine = self._mine(rows)
        micro = []
        for lo in range(0, mine.size, self.micro):
            out = to_batch(self.source.gather(mine[lo : lo + self.micro], check=self.check_rows))
            micro.append(out.pin_memory() if self.pin_memory else out)
        epoch, offset = self.order.position(0, batch) if self.order.streams[0] is not None else (0, 0)
        return StepData(
            epoch=epoch, index=offset // self.G, micro_batches=micro, batch=batch,
            mlm_targets=int(self.source.counts(rows, "mlm_positions").sum()),
            sbo_targets=int(self.source.counts(rows, "sbo_positions").sum()),
            tokens=int(self.source.row_tokens(rows).sum()),
            rows_by_dataset=[int(c) for c in self.order.consumed(batch + 1)],
        )  # fmt: skip

    def _produce(self) -> None:
        try:
            while not self.verifier.valid_checked.wait(0.1):  # validation rows are checked before the first step
                if self._stop.is_set():
                    return
            for batch in itertools.count(self.position):
                if self.verifier.error is not None:  # a bad shard is reported as soon as it is known
                    raise self.verifier.error
                self.verifier.producing_batch = batch
                item = self.make_step(batch)
                self.verifier.step_built(batch)
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it in the main thread
            self._put(e)

    def _put(self, item) -> bool:
        """Queue `item` unless the loader is closing (then False): a full queue never blocks close()."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _start(self) -> None:
        if self._thread is None:
            self.verifier.start()
            self._thread = threading.Thread(target=self._produce, name="spanbert-loader", daemon=True)
            self._thread.start()

    def peek_error(self) -> BaseException | None:
        """Wait for the next step's data without consuming it; the exception that ended the stream, or None."""
        self._start()
        if self._pending is None:
            self._pending = self._queue.get()
        return self._pending if isinstance(self._pending, BaseException) else None

    def __iter__(self) -> Iterator[StepData]:
        self._start()
        while True:
            item = self._pending if self._pending is not None else self._queue.get()
            self._pending = None
            if isinstance(item, BaseException):
                raise item
            self.position = item.batch + 1  # the next batch to train on
            yield item

    def state_dict(self) -> dict:
        """The position of the next global batch, valid for any rank count with the same global batch size, and each
        dataset's place in its own stream: rows given, training epoch and row within it (a single dataset's also as
        `epoch` and `batch`, the form of checkpoints from before blends)."""
        consumed = self.order.consumed(self.position)
        datasets = []
        for k, (name, weight) in enumerate(zip(self.blend.names, self.blend.weights, strict=True)):
            entry = {"path": name, "weight": weight, "rows": int(consumed[k])}
            if self.order.streams[k] is not None:
                entry["epoch"], entry["row"] = self.order.position(k, self.position)
            datasets.append(entry)
        state = {"global_batch": self.position, "global_batch_size": self.G, "seed": self.seed, "datasets": datasets}
        if len(datasets) == 1:
            state["epoch"], state["batch"] = datasets[0]["epoch"], datasets[0]["row"] // self.G
        return state

    def close(self) -> None:
        """Stop both threads and wait for them: each stops within one batch or one shard hash. A thread still inside
        a torch call when the interpreter finalises would abort the process (see spanbert_train.dist)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.verifier.join()
