"""Streaming the packed shards (docs/FORMAT.md) into per-rank batches, deterministically.

Every shard is memory-mapped (`pa.memory_map` + `pa.ipc.open_file`) and its columns are used
zero-copy as NumPy arrays; a batch is gathered with NumPy fancy indexing (the ragged list columns
through their offsets), never with a Python loop over tokens.

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
from pathlib import Path

import numpy as np
import pyarrow as pa

from spanbert_data.packing import record_batch_columns
from spanbert_data.rowcheck import first_bad_row
from spanbert_data.shards import DatasetError, HashCheck, load_manifest, location, resolve_inside
from spanbert_train.config import ConfigError
from spanbert_train.verify_ahead import VerifyAhead

LIST_COLUMNS = (
    "example_lengths", "mlm_positions", "mlm_labels", "sbo_positions",
    "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels",
)  # fmt: skip


class Shard:
    """One memory-mapped training or validation shard, checked against its manifest entry.

    Opening is cheap and checks size, Arrow structure, schema, row count and list offsets (so no later
    gather can leave a buffer). With verify='sha256' the content hash is checked lazily, once, by
    `verify_bytes()`: `RowSource.gather` calls it before the shard's first row is used, and the
    TrainLoader's verifier thread calls it earlier, ahead of need.
    """

    def __init__(self, root: Path, entry: dict, max_seq_len: int, verify: str = "sha256",
                 vocab_size: int | None = None):  # fmt: skip
        self.path = resolve_inside(root, entry["path"])
        self.name = str(self.path)  # how messages name it (a remote shard's URL: spanbert_train.remote_data)
        self.vocab_size = vocab_size
        self.advice = f"; restore the file or rebuild the dataset (`spanbert-data verify {root}` lists every bad file)"
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: shard is missing; rebuild the dataset or restore the file")
        size = self.path.stat().st_size
        if size != entry["bytes"]:
            raise DatasetError(f"{self.path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced)")
        self.hash_check = None
        if verify == "sha256":
            if not isinstance(entry.get("sha256"), str):
                raise DatasetError(f"{self.path}: the manifest records no sha256 for it; rebuild the dataset")
            self.hash_check = HashCheck(self.path, entry["sha256"], self.advice)
        try:
            self._open(entry, max_seq_len)
        except DatasetError:
            self.verify_bytes()  # a damaged file is named as such when the hash can tell
            raise

    def _open(self, entry: dict, max_seq_len: int) -> None:
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
            if reader.num_record_batches != 1:
                raise DatasetError(f"{self.name}: expected 1 record batch, found {reader.num_record_batches}")
            batch = reader.get_batch(0)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatasetError(f"{self.name}: not a readable Arrow file ({reason}); the shard is corrupt") from None
        if batch.num_rows != entry["rows"]:
            raise DatasetError(f"{self.name}: {batch.num_rows} rows, manifest says {entry['rows']}")
        try:
            self.columns = record_batch_columns(batch)  # zero-copy NumPy views; schema and offsets checked
        except ValueError as e:
            raise DatasetError(f"{self.name}: {e}; the shard is corrupt{self.advice}") from None
        if self.columns["input_ids"].shape[1] != max_seq_len:
            width = self.columns["input_ids"].shape[1]
            raise DatasetError(f"{self.name}: rows have {width} slots, the manifest says max_seq_len {max_seq_len}")
        self.rows = batch.num_rows
        off, lengths = self.columns["example_lengths"]
        # Non-padding tokens of every row (its examples' lengths summed), for tokens/s without touching input_ids.
        csum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.row_tokens = csum[off[1:]] - csum[off[:-1]]

    @property
    def verified(self) -> bool:
        """True when the content hash is known to match, or hashing is off (verify='size')."""
        return self.hash_check is None or self.hash_check.done

    def verify_bytes(self) -> None:
        """Check the content hash once (no-op with verify='size'); raise DatasetError naming the shard if it differs."""
        if self.hash_check is not None:
            self.hash_check.ensure()


class Dataset:
    """A dataset directory: the manifest plus every shard of every mask epoch and of valid/, opened and checked.

    verify='sha256' (the default) also checks each shard's content hash before its first row is used
    (lazily, see Shard); 'size' trusts the storage and skips it. Rows are structurally checked either way."""

    def __init__(self, root, verify: str = "sha256", storage=None):
        """`root`: a dataset directory, or a URL / `spanbert_data.remote.Remote` of one in object storage, whose
        shards are downloaded into a local cache ahead of need (`storage`: a spanbert_train.remote_data.Storage,
        default: the default cache directory and limit)."""
        self.root = location(root, storage.options if storage is not None else None)
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
        if isinstance(self.root, Path):
            shard = functools.partial(Shard, self.root, max_seq_len=self.max_seq_len, verify=verify,
                                      vocab_size=self.vocab_size)  # fmt: skip
        else:  # object storage: shards open lazily, once downloaded and verified (spanbert_train.remote_data)
            from spanbert_train.remote_data import remote_shards

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
            from spanbert_train.remote_data import size_cache

            size_cache(self, storage)

    def close(self) -> None:
        """Let go of a remote dataset's cache (its holds and downloads in flight); nothing to do for local data."""
        if self.cache is not None:
            self.cache.close()

    def rows(self, mask_epoch: int) -> int:
        return sum(s.rows for s in self.epochs[mask_epoch])


class RowSource:
    """Rows of a list of shards addressed by one index 0..N-1, gathered into batches."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self.first = np.concatenate([[0], np.cumsum([s.rows for s in shards])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.first[-1])

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.first, rows, side="right") - 1
        return shard, rows - self.first[shard]

    def counts(self, rows: np.ndarray, name: str) -> np.ndarray:
        """Per-row number of entries of a list column (e.g. MLM targets) — no values are touched."""
        shard, local = self._locate(rows)
        n = np.empty(len(rows), dtype=np.int64)
        for s in np.unique(shard):
            sel = shard == s
            off = self.shards[s].columns[name][0]
            n[sel] = off[local[sel] + 1].astype(np.int64) - off[local[sel]]
        return n

    def row_tokens(self, rows: np.ndarray) -> np.ndarray:
        """Per-row number of non-padding tokens."""
        shard, local = self._locate(rows)
        n = np.empty(len(rows), dtype=np.int64)
        for s in np.unique(shard):
            sel = shard == s
            n[sel] = self.shards[s].row_tokens[local[sel]]
        return n

    def gather(self, rows: np.ndarray, check: bool = True) -> dict:
        """The given rows, in the given order: input_ids (B, T) and every list column as (offsets, values).

        Each shard's bytes are verified before its first row is used (Shard.verify_bytes), and the rows are
        checked structurally (spanbert_data.rowcheck) unless `check` is False (benchmarks only): a bad row
        raises DatasetError naming the shard, the row and what is wrong, before any tensor is made."""
        shard, local = self._locate(rows)
        groups = [(s, shard == s) for s in np.unique(shard)]
        for s, _ in groups:
            self.shards[s].verify_bytes()
        first = self.shards[0].columns["input_ids"]
        ids = np.empty((len(rows), first.shape[1]), dtype=first.dtype)
        for s, sel in groups:
            ids[sel] = self.shards[s].columns["input_ids"][local[sel]]
        out = {"input_ids": ids}
        for name in LIST_COLUMNS:
            lengths = self.counts(rows, name)
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values = np.empty(int(offsets[-1]), dtype=self.shards[0].columns[name][1].dtype)
            for s, sel in groups:
                src_off, src_val = self.shards[s].columns[name]
                n = lengths[sel]
                # Ragged copy: entry j of row i goes from src_start[i] + j to dst_start[i] + j.
                within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
                src = np.repeat(src_off[local[sel]].astype(np.int64), n) + within
                dst = np.repeat(offsets[:-1][sel], n) + within
                values[dst] = src_val[src]
            out[name] = (offsets, values)
        if check:
            vocab = self.shards[0].vocab_size
            found = first_bad_row(out, vocab if vocab is not None else np.iinfo(np.int64).max)
            if found is not None:
                i, what = found
                bad = self.shards[shard[i]]
                raise DatasetError(f"{bad.name}: row {local[i]}: {what}; the shard is corrupt{bad.advice}")
        return out


def to_batch(cols: dict):
    """Turn gathered columns into the model's Batch (spanbert_train.batch.make_batch)."""
    from spanbert_train.batch import make_batch

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
            from spanbert_train.remote_data import DownloadAhead

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

