"""Training from a dataset in object storage (`--data s3://…`, `gs://…`, any fsspec URL).

Shards are downloaded into a bounded local cache (spanbert_data/cache.py), checked against the manifest's
SHA-256 while they stream, and then memory-mapped exactly like local shards; the row order, resume and
rank-count independence are the local loader's (spanbert_train/data.py), untouched.

What "ahead of need" means here. Training epoch e reads mask epoch e mod K in one global permutation of its
rows, and every rank reads the offsets of the whole global batch (for the loss's target counts), so every
rank needs every shard of the current mask epoch that some batch of the epoch touches. `DownloadAhead`, the
loader's second thread, therefore fetches, in order:

1. the validation shards (kept for the whole run), whose rows are checked before the first step;
2. the shards of the current chunk (with one dataset: training epoch; in a blend, the batches in which no
   dataset changes epoch, spanbert_train.verify_ahead), from the resume position on, in order of first use;
3. those of the next chunk once the batch builder has entered the current one (as far as the cache limit
   allows: downloads wait for space).

After the batch builder has built the last step of a chunk that touches a shard, the shard is let go unless
the next chunk reads it too (so with K = 1 nothing is let go): it stays in the cache, least recently used first
to be evicted when a download needs its space. The cache must therefore hold one mask epoch plus the validation
shards at once; a smaller --cache-limit fails at start with both sizes. Two epochs' worth lets the next epoch
download while this one trains, which is the default limit when the disk has room.

A blend has one cache (one directory, one limit), shared by its datasets in object storage; local datasets of a
blend need none. Each dataset's budget is its own need (one mask epoch, or two consecutive ones when a global
batch can hold the end of one epoch and the start of its next, plus its validation shards), and the budgets add
up within --cache-limit; since a chunk's shards are all fetched before the next chunk's, no dataset's downloads
ahead can take the space another needs now.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spanbert_data.cache import GB, CacheClosed, CacheItem, ShardCache, choose_limit, default_cache_dir
from spanbert_data.errors import DatasetError
from spanbert_data.location import Location
from spanbert_train.shard import Shard
from spanbert_train.verify_ahead import VerifyAhead


@dataclass
class Storage:
    """How to reach a remote dataset and where to cache it (DataConfig's storage_options, cache_dir, cache_limit)."""

    options: dict | None = None  # fsspec storage options (credentials, endpoint_url, ...)
    cache_dir: str | Path | None = None  # None: spanbert_data.cache.default_cache_dir()
    cache_limit: int | None = None  # bytes; None: two mask epochs plus the validation shards, within free space
    _cache: ShardCache | None = field(default=None, init=False, repr=False, compare=False)

    def shard_cache(self, verify: str = "sha256") -> ShardCache:
        """The one ShardCache of every remote dataset opened with this Storage (made on first use)."""
        if self._cache is None:
            directory = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
            try:
                self._cache = ShardCache(directory, limit=0, verify_cached=verify == "sha256")
            except OSError as e:
                raise DatasetError(f"{directory}: cannot use it as the cache directory ({e.strerror or e}); "
                                   "choose another --cache-dir") from None  # fmt: skip
        return self._cache

    @classmethod
    def from_config(cls, data) -> Storage:
        """From a DataConfig (cache_limit in GB, 0 = the default)."""
        return cls(data.storage_options or None, data.cache_dir or None,
                   int(data.cache_limit * GB) if data.cache_limit else None)  # fmt: skip


class RemoteShard(Shard):
    """A shard in object storage: opened (size, structure, offsets; see Shard) only once its verified copy is in
    the cache, on first use or ahead of it; `release_after(epoch)` lets go of it and of its memory map."""

    def __init__(self, remote: Location, cache: ShardCache, entry: dict, max_seq_len: int, vocab_size: int | None):
        try:
            self.item = CacheItem(remote, entry["path"], int(entry["bytes"]), str(entry["sha256"]))
            self.rows = int(entry["rows"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{remote / 'manifest.json'}: shard entry without {e}; rebuild the dataset") from None
        remote.check(entry["path"])  # refuses a name that leaves the prefix
        self.name = self.item.name
        self.path: Path | None = None  # the cached copy, once there
        self.entry, self.max_seq_len, self.vocab_size, self.cache = entry, max_seq_len, vocab_size, cache
        self.hash_check = None  # the download itself checks the SHA-256
        self.advice = f"; restore the object or rebuild (`spanbert-data verify {remote}` lists every bad one)"
        self._columns = self._row_tokens = None
        self._future = None  # the cache's download of this shard, while it is held
        self._used_through = -1  # the last chunk (its first global batch) whose steps no longer need this shard
        self._lock = threading.Lock()

    @property
    def columns(self) -> dict:
        if self._columns is None:
            self.verify_bytes()
        return self._columns

    @columns.setter
    def columns(self, value) -> None:
        self._columns = value

    @property
    def row_tokens(self) -> np.ndarray:
        if self._row_tokens is None:
            self.verify_bytes()
        return self._row_tokens

    @row_tokens.setter
    def row_tokens(self, value) -> None:
        self._row_tokens = value

    @property
    def verified(self) -> bool:
        return self._columns is not None

    def verify_bytes(self) -> None:
        """Wait for the verified copy and open it (the batch builder and evaluation call this before a gather)."""
        self.ensure(None)

    def prefetch(self, chunk: int) -> None:
        """Hold the shard and start its download for the chunk that begins at global batch `chunk` (non-blocking)."""
        with self._lock:
            if chunk > self._used_through and self._future is None:
                self._future = self.cache.fetch(self.item)

    def ensure(self, chunk: int | None) -> None:
        """Open the verified copy, downloading it first if needed; for `chunk`, skip a shard already let go of."""
        if self._columns is not None:
            return
        with self._lock:
            if self._columns is not None or (chunk is not None and chunk <= self._used_through):
                return
            if self._future is None:
                self._future = self.cache.fetch(self.item)
            try:
                self.path = self._future.result()
            except CacheClosed:
                raise DatasetError(f"{self.name}: the run is stopping") from None
            self._open(self.entry, self.max_seq_len)

    def downloaded(self) -> bool:
        """Whether the download this shard waits for (if any) has finished, well or not."""
        future = self._future
        return future is None or future.done()

    def release_after(self, chunk: int) -> None:
        """No step of the chunk that begins at global batch `chunk` needs the shard any more: drop its memory map and
        its hold."""
        with self._lock:
            self._used_through = max(self._used_through, chunk)
            if self._future is not None:
                self._columns = self._row_tokens = None
                self._future = None
                self.cache.release(self.item)


def remote_shards(dataset, storage: Storage | None, verify: str = "sha256"):
    """Give the Dataset the ShardCache of `storage` (one per Storage: the datasets of a blend share it); return the
    factory of its RemoteShards (entry -> shard). Downloads are always hashed; with verify='sha256' a copy found in
    the cache is hashed again before its first use in this process."""
    dataset.cache = (storage or Storage()).shard_cache(verify)
    return functools.partial(RemoteShard, dataset.root, dataset.cache, max_seq_len=dataset.max_seq_len,
                             vocab_size=dataset.vocab_size)  # fmt: skip


def _unique_bytes(shards) -> int:
    return sum({s.item.sha256: s.item.size for s in shards}.values())


def size_cache(parts: list[tuple], storage: Storage | None) -> None:
    """Set the limit of the cache that the remote datasets `parts` share: each a tuple (dataset, whether its training
    shards are read, whether one global batch can hold rows of two of its training epochs). A dataset's budget is at
    least one mask epoch (two consecutive ones when a batch can straddle them) plus its validation shards, by
    default two epochs' worth (downloads ahead); the budgets add up, never beyond what the disk has room for.
    DatasetError with the sizes when --cache-limit or the disk cannot hold what is needed at once."""
    budgets = []  # (dataset, need, want)
    for dataset, trains, straddles in parts:
        epochs = [_unique_bytes(shards) for shards in dataset.epochs] if trains else [0]
        valid = _unique_bytes(dataset.valid)
        k = len(epochs)
        pair = max(epochs[i] + epochs[(i + 1) % k] for i in range(k)) if k > 1 else epochs[0]
        budgets.append((dataset, (pair if straddles else max(epochs)) + valid, pair + valid))
    need, want = sum(b[1] for b in budgets), sum(b[2] for b in budgets)
    limit = storage.cache_limit if storage is not None else None
    first = parts[0][0]
    if len(parts) == 1 and not parts[0][2]:
        epochs, valid = [_unique_bytes(shards) for shards in first.epochs], _unique_bytes(first.valid)
        what = (f"one mask epoch of {first.root} ({max(epochs) / GB:.3g} GB of shards, plus {valid / GB:.3g} GB of "
                "validation shards)")  # fmt: skip
    else:
        what = "the blend's datasets (" + "; ".join(f"{d.root}: {n / GB:.3g} GB" for d, n, _ in budgets) + ")"
    cache = first.cache
    cache.limit = choose_limit(cache.dir, cache.usage(), need, want, limit, what, cache.log)
    if os.environ.get("RANK", "0") != "0":
        return
    for dataset, n, w in budgets:
        items = [s.item for shards in (*dataset.epochs, dataset.valid) for s in shards]
        total = sum({i.sha256: i.size for i in items}.values())
        there = cache.cached_bytes(items)
        if len(budgets) == 1:
            room = f"limit {cache.limit / GB:.3g} GB"
        else:  # the room above the needs is shared in proportion to what each dataset would like ahead
            extra = (cache.limit - need) * (w - n) / (want - need) if want > need else 0
            room = f"budget {(n + extra) / GB:.3g} of the limit {cache.limit / GB:.3g} GB"
        cache.log(f"data: {dataset.root} through the cache {cache.dir} ({room}; {there / GB:.3g} of its "
                  f"{total / GB:.3g} GB already there)")  # fmt: skip


class DownloadAhead(VerifyAhead):
    """The loader's second thread when a dataset is in object storage: downloads ahead of need, lets go after last use
    (see the module docstring). It replaces VerifyAhead, whose hashing the download already does (a local dataset of
    the same blend is hashed here, in the same order)."""

    def __init__(self, loader):
        blend = loader.blend
        super().__init__(blend.training_shards(), blend.valid, self.need, loader.position, loader.order.chunk_end,
                         loader._stop)  # fmt: skip
        self.loader = loader
        self._chunk: tuple[int, int, dict[int, list]] | None = None  # the builder's chunk, its shards' last uses
        # Every chunk reads the same shards when each dataset that gives rows has one mask epoch: keep them all.
        self._keep_all = all(ds.mask_epochs == 1 for ds, w in zip(blend.datasets, blend.weights, strict=True) if w)

    def need(self, first: int, end: int) -> list:
        """The shards that global batches first .. end-1 touch (any rank's rows: the global batch's target counts
        read them all), in order of first use."""
        return self.loader.shards_in_order_of_use(first, end, every_rank=True)

    def _check_validation_rows(self) -> None:
        for shard in self.valid.shards if self.valid is not None else ():
            shard.prefetch(-1)  # kept for the whole run: never let go of
        super()._check_validation_rows()

    def _hash_training_shards(self) -> None:
        first = self.start_at
        while not self.stop.is_set():
            end = self.chunk_end(first)
            shards = self.need(first, end)
            for shard in shards:
                shard.prefetch(first)  # all of the chunk's downloads queued at once (the cache runs a few at a time)
            for shard in shards:
                while not shard.downloaded():  # a download may wait for cache space: stay responsive to stop
                    if self.stop.wait(0.05):
                        return
                shard.ensure(first)
            done, first = first, end
            while self.producing_batch < done:  # one chunk of look-ahead
                if self.stop.wait(0.2):
                    return

    def step_built(self, batch: int) -> None:
        """After global batch `batch` is built: let go of the shards it used last in its chunk."""
        if self._keep_all:
            return
        if self._chunk is None or batch >= self._chunk[1]:  # the builder moves through the verifier's chunks
            first = self.start_at if self._chunk is None else self._chunk[1]
            end = self.chunk_end(first)
            self._chunk = (first, end, self._last_uses(first, end))
        for shard in self._chunk[2].pop(batch, ()):
            shard.release_after(self._chunk[0])

    def _last_uses(self, first: int, end: int) -> dict[int, list]:
        """Global batch -> the shards whose last use in batches first .. end-1 it is, except those the next chunk
        reads too (kept)."""
        source, G = self.loader.source, self.loader.G
        last = np.full(len(source.shards), -1, dtype=np.int64)
        for lo, rows in self.loader.order.blocks(first, end):
            shard, _ = source._locate(rows.ravel())
            np.maximum.at(last, shard, lo + np.arange(shard.size, dtype=np.int64) // G)
        kept = {id(s) for s in self.need(end, self.chunk_end(end))}
        by_batch: dict[int, list] = {}
        for s in np.flatnonzero(last >= 0):
            if id(source.shards[s]) not in kept:
                by_batch.setdefault(int(last[s]), []).append(source.shards[s])
        return by_batch
