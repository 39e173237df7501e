"""Streaming the packed shards (docs/FORMAT.md) into per-rank batches, deterministically.

A `Dataset` opens every shard of a manifest (spanbert_train/shard.py: memory-mapped, zero-copy NumPy
columns, gathered with fancy indexing, never a Python loop over tokens); a dataset in object storage has its
shards downloaded into a local cache ahead of need (spanbert_train/remote_data.py).

Order (DESIGN §8): training epoch e reads mask epoch e mod K, in the order of a
permutation of that epoch's rows seeded by (seed, e). Global batch b is perm[b·G:(b+1)·G]; it is
split contiguously over the ranks, and each rank's part contiguously into micro-batches. The
sequence of global batches therefore depends only on (seed, epoch, G): a run resumed at position
(epoch, b) on any number of ranks with the same G continues the same sample sequence.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from spanbert_data.errors import DatasetError
from spanbert_data.location import Location
from spanbert_data.shards import load_manifest
from spanbert_train.batch import make_batch
from spanbert_train.errors import ConfigError
from spanbert_train.remote_data import DownloadAhead, remote_shards, size_cache
from spanbert_train.shard import LIST_COLUMNS, RowSource, Shard
from spanbert_train.verify_ahead import VerifyAhead


class Dataset:
    """A dataset directory: the manifest plus every shard of every mask epoch and of valid/, opened and checked.

    verify='sha256' (the default) also checks each shard's content hash before its first row is used
    (lazily, see Shard); 'size' trusts the storage and skips it. Rows are structurally checked either way."""

    def __init__(self, root, verify: str = "sha256", storage=None):
        """`root`: a dataset directory, or a URL (or a `spanbert_data.location.Location`) of one in object storage,
        whose shards are downloaded into a local cache ahead of need (`storage`: a spanbert_train.remote_data.Storage,
        default: the default cache directory and limit)."""
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
        if self.cache is not None:
            size_cache(self, storage)

    def close(self) -> None:
        """Let go of a remote dataset's cache (its holds and downloads in flight); nothing to do for local data."""
        if self.cache is not None:
            self.cache.close()

    def rows(self, mask_epoch: int) -> int:
        return sum(s.rows for s in self.epochs[mask_epoch])


def to_batch(cols: dict):
    """Turn gathered columns into the model's Batch (spanbert_train.batch.make_batch)."""
    return make_batch(cols["input_ids"], **{name: cols[name] for name in LIST_COLUMNS})


@dataclass
class StepData:
    """Everything one rank needs for one optimizer step, plus global-batch totals known from the data."""

    epoch: int
    index: int  # global batch index within the epoch
    micro_batches: list  # this rank's Batches, in order
    mlm_targets: int  # MLM targets of the GLOBAL batch (all ranks, all micro-batches): SPEC §4's divisor
    sbo_targets: int  # SBO targets of the global batch
    tokens: int  # non-padding tokens of the global batch


def epoch_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """The row order of training epoch `epoch`: a permutation that depends only on (seed, epoch, n_rows)."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def check_batch_geometry(dataset: Dataset, global_batch: int, micro_batch: int, world: int) -> None:
    """Raise ConfigError unless the global batch splits evenly over ranks and micro-batches and fits every epoch."""
    if global_batch % (world * micro_batch):
        raise ConfigError(
            f"data.global_batch_size ({global_batch}) must be a multiple of ranks × data.micro_batch "
            f"({world} × {micro_batch})"
        )
    for k in range(dataset.mask_epochs):
        if dataset.rows(k) < global_batch:
            raise ConfigError(
                f"data.global_batch_size ({global_batch}) exceeds the {dataset.rows(k)} rows of mask epoch {k} "
                f"of {dataset.root}"
            )


class TrainLoader:
    """Endless per-rank stream of StepData starting at position (epoch, batch), prefetched in a thread.

    Every rank computes the whole global batch's target counts from the offsets alone (cheap), so the
    loss normalisation of SPEC §4 needs no collective. `pin_memory` pins the batches for async H2D copies.
    A second thread (spanbert_train.verify_ahead) checks the shards this rank will read ahead of need; a bad
    shard or row ends the stream with a DatasetError, which `peek_error` shows one step early (the trainer
    uses it to stop every rank at the same step). `check_rows=False` skips the row checks (benchmarks only).
    """

    def __init__(self, dataset: Dataset, global_batch: int, micro_batch: int, rank: int, world: int, seed: int,
                 start: tuple[int, int] = (0, 0), prefetch: int = 2, pin_memory: bool = False,
                 check_rows: bool = True):  # fmt: skip
        check_batch_geometry(dataset, global_batch, micro_batch, world)
        self.dataset, self.G, self.micro, self.rank, self.world, self.seed = (
            dataset, global_batch, micro_batch, rank, world, seed,
        )  # fmt: skip
        self.sources = [RowSource(shards) for shards in dataset.epochs]
        self.position = tuple(start)
        self.pin_memory, self.check_rows = pin_memory, check_rows
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = None  # the next queue item, taken early by peek_error()
        self._orders: dict[int, np.ndarray] = {}  # training epoch -> its row order (see _order)
        if dataset.cache is not None:  # object storage: download ahead of need, let go after last use
            self.verifier = DownloadAhead(self)
        else:
            self.verifier = VerifyAhead([s for shards in dataset.epochs for s in shards],
                                        RowSource(dataset.valid) if dataset.valid else None,
                                        self.shards_in_order_of_use, self.position, self._stop)  # fmt: skip

    def batches_per_epoch(self, epoch: int) -> int:
        return len(self.sources[epoch % len(self.sources)]) // self.G

    def _order(self, epoch: int) -> np.ndarray:
        """epoch_order of training epoch `epoch`, memoised: a permutation of millions of rows takes ~0.1-1 s, far
        too long to redo every step. The few most recent epochs are kept (the verifier looks one epoch ahead)."""
        order = self._orders.get(epoch)
        if order is None:
            order = epoch_order(self.seed, epoch, len(self.sources[epoch % len(self.sources)]))
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1} | {epoch: order}
        return order

    def _my_rows(self, epoch: int, first: int, end: int) -> np.ndarray:
        """This rank's rows of global batches first..end-1 of training epoch `epoch`, shape (batches, G / world)."""
        rows = self._order(epoch)[first * self.G : end * self.G].reshape(-1, self.G)
        per_rank = self.G // self.world
        return rows[:, self.rank * per_rank : (self.rank + 1) * per_rank]

    def shards_in_order_of_use(self, epoch: int, first: int = 0) -> list[Shard]:
        """The shards this rank reads in training epoch `epoch` from global batch `first` on, in order of first use."""
        source = self.sources[epoch % len(self.sources)]
        shard, _ = source._locate(self._my_rows(epoch, first, self.batches_per_epoch(epoch)).ravel())
        _, first_use = np.unique(shard, return_index=True)
        return [source.shards[s] for s in shard[np.sort(first_use)]]

    def make_step(self, epoch: int, index: int) -> StepData:
        """Build the StepData of global batch `index` of training epoch `epoch` for this rank (pure function)."""
        source = self.sources[epoch % len(self.sources)]
        rows = self._order(epoch)[index * self.G : (index + 1) * self.G]
        per_rank = self.G // self.world
        mine = rows[self.rank * per_rank : (self.rank + 1) * per_rank]
        micro = []
        for lo in range(0, per_rank, self.micro):
            batch = to_batch(source.gather(mine[lo : lo + self.micro], check=self.check_rows))
            micro.append(batch.pin_memory() if self.pin_memory else batch)
        return StepData(
            epoch=epoch, index=index, micro_batches=micro,
            mlm_targets=int(source.counts(rows, "mlm_positions").sum()),
            sbo_targets=int(source.counts(rows, "sbo_positions").sum()),
            tokens=int(source.row_tokens(rows).sum()),
        )  # fmt: skip

    def _positions(self) -> Iterator[tuple[int, int]]:
        epoch, index = self.position
        while True:
            if index >= self.batches_per_epoch(epoch):
                epoch, index = epoch + 1, 0
                continue
            yield epoch, index
            index += 1

    def _produce(self) -> None:
        try:
            while not self.verifier.valid_checked.wait(0.1):  # validation rows are checked before the first step
                if self._stop.is_set():
                    return
            for epoch, index in self._positions():
                if self.verifier.error is not None:  # a bad shard is reported as soon as it is known
                    raise self.verifier.error
                self.verifier.producing_epoch = epoch
                item = self.make_step(epoch, index)
                self.verifier.step_built(epoch, index)
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
            self.position = (item.epoch, item.index + 1)  # the next batch to train on
            yield item

    def state_dict(self) -> dict:
        """The position of the next global batch, valid for any rank count with the same global batch size."""
        return {"epoch": self.position[0], "batch": self.position[1], "global_batch_size": self.G, "seed": self.seed}

    def close(self) -> None:
        """Stop both threads and wait for them: each stops within one batch or one shard hash. A thread still inside
        a torch call when the interpreter finalises would abort the process (see spanbert_train.dist)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.verifier.join()

