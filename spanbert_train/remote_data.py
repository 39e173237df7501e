"""Training from a dataset in object storage (`--data s3://…`, `gs://…`, any fsspec URL).

Shards are downloaded into a bounded local cache (spanbert_data/cache.py), checked against the manifest's
SHA-256 while they stream, and then memory-mapped exactly like local shards; the row order, resume and
rank-count independence are the local loader's (spanbert_train/data.py), untouched.

What "ahead of need" means here. Training epoch e reads mask epoch e mod K in one global permutation of its
rows, and every rank reads the offsets of the whole global batch (for the loss's target counts), so every
rank needs every shard of the current mask epoch that some batch of the epoch touches. `DownloadAhead`, the
loader's second thread, therefore fetches, in order:

1. the validation shards (kept for the whole run), whose rows are checked before the first step;
2. the shards of the current training epoch, from the resume position on, in order of first use;
3. those of the next epoch once the batch builder has entered the current one (as far as the cache limit
   allows: downloads wait for space).

After the batch builder has built the last step that touches a shard, the shard is let go (when the next
epoch reads another mask epoch, i.e. K > 1): it stays in the cache, least recently used first to be evicted
when a download needs its space. The cache must therefore hold one mask epoch plus the validation shards
at once; a smaller --cache-limit fails at start with both sizes. Two epochs' worth lets the next epoch
download while this one trains, which is the default limit when the disk has room.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spanbert_data.cache import GB, CacheClosed, CacheItem, ShardCache, choose_limit, default_cache_dir
from spanbert_data.errors import DatasetError
from spanbert_data.location import Location
from spanbert_train.shard import RowSource, Shard
from spanbert_train.verify_ahead import VerifyAhead


@dataclass
class Storage:
    """How to reach a remote dataset and where to cache it (DataConfig's storage_options, cache_dir, cache_limit)."""

    options: dict | None = None  # fsspec storage options (credentials, endpoint_url, ...)
    cache_dir: str | Path | None = None  # None: spanbert_data.cache.default_cache_dir()
    cache_limit: int | None = None  # bytes; None: two mask epochs plus the validation shards, within free space

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
        self._used_through = -1  # the last training epoch whose steps no longer need this shard
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

    def prefetch(self, epoch: int) -> None:
        """Hold the shard and start its download for training epoch `epoch` (non-blocking)."""
        with self._lock:
            if epoch > self._used_through and self._future is None:
                self._future = self.cache.fetch(self.item)

    def ensure(self, epoch: int | None) -> None:
        """Open the verified copy, downloading it first if needed; for `epoch`, skip a shard already let go of."""
        if self._columns is not None:
            return
        with self._lock:
            if self._columns is not None or (epoch is not None and epoch <= self._used_through):
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

    def release_after(self, epoch: int) -> None:
        """No step of training epoch `epoch` needs the shard any more: drop its memory map and its hold."""
        with self._lock:
            self._used_through = max(self._used_through, epoch)
            if self._future is not None:
                self._columns = self._row_tokens = None
                self._future = None
                self.cache.release(self.item)


def remote_shards(dataset, storage: Storage | None, verify: str = "sha256"):
    """Give the Dataset its ShardCache; return the factory of its RemoteShards (entry -> shard). Downloads are always
    hashed; with verify='sha256' a copy found in the cache is hashed again before its first use in this process."""
    storage = storage or Storage()
    directory = Path(storage.cache_dir) if storage.cache_dir else default_cache_dir()
    try:
        dataset.cache = ShardCache(directory, limit=0, verify_cached=verify == "sha256")
    except OSError as e:
        raise DatasetError(f"{directory}: cannot use it as the cache directory ({e.strerror or e}); "
                           "choose another --cache-dir") from None  # fmt: skip
    return functools.partial(RemoteShard, dataset.root, dataset.cache, max_seq_len=dataset.max_seq_len,
                             vocab_size=dataset.vocab_size)  # fmt: skip


def _unique_bytes(shards) -> int:
    return sum({s.item.sha256: s.item.size for s in shards}.values())


def size_cache(dataset, storage: Storage | None) -> None:
    """Set the cache's limit: at least one mask epoch plus the validation shards (else DatasetError with both
    sizes), by default two epochs' worth (downloads ahead), never more than the disk has room for."""
    epochs = [_unique_bytes(shards) for shards in dataset.epochs]
    valid = _unique_bytes(dataset.valid)
    k = len(epochs)
    need = max(epochs) + valid
    want = max(epochs[i] + epochs[(i + 1) % k] for i in range(k)) + valid if k > 1 else need
    limit = storage.cache_limit if storage is not None else None
    what = (f"one mask epoch of {dataset.root} ({max(epochs) / GB:.3g} GB of shards, plus {valid / GB:.3g} GB of "
            "validation shards)")  # fmt: skip
    cache = dataset.cache
    cache.limit = choose_limit(cache.dir, cache.usage(), need, want, limit, what, cache.log)
    if os.environ.get("RANK", "0") == "0":
        there = cache.cached_bytes([s.item for shards in (*dataset.epochs, dataset.valid) for s in shards])
        cache.log(f"data: {dataset.root} through the cache {cache.dir} (limit {cache.limit / GB:.3g} GB; "
                  f"{there / GB:.3g} of its {(sum(epochs) + valid) / GB:.3g} GB already there)")  # fmt: skip


class DownloadAhead(VerifyAhead):
    """The loader's second thread for a remote dataset: downloads ahead of need, lets go after last use (see the
    module docstring). It replaces VerifyAhead, whose hashing the download already does."""

    def __init__(self, loader):
        ds = loader.dataset
        super().__init__([s for shards in ds.epochs for s in shards], RowSource(ds.valid) if ds.valid else None,
                         self.need, loader.position, loader._stop)  # fmt: skip
        self.loader = loader
        self._last_use: tuple[int, dict[int, list[RemoteShard]]] | None = None

    def need(self, epoch: int, first: int = 0) -> list[RemoteShard]:
        """The shards that global batches `first`.. of training epoch `epoch` touch (any rank's rows: the global
        batch's target counts read them all), in order of first use."""
        loader = self.loader
        source = loader.sources[epoch % len(loader.sources)]
        rows = loader._order(epoch)[first * loader.G : loader.batches_per_epoch(epoch) * loader.G]
        shard, _ = source._locate(rows)
        _, first_use = np.unique(shard, return_index=True)
        return [source.shards[s] for s in shard[np.sort(first_use)]]

    def _check_validation_rows(self) -> None:
        for shard in self.loader.dataset.valid:
            shard.prefetch(-1)  # kept for the whole run: never let go of
        super()._check_validation_rows()

    def _hash_training_shards(self) -> None:
        epoch, index = self.start_at
        while not self.stop.is_set():
            shards = self.need(epoch, index)
            for shard in shards:
                shard.prefetch(epoch)  # all of the epoch's downloads queued at once (the cache runs a few at a time)
            for shard in shards:
                while not shard.downloaded():  # a download may wait for cache space: stay responsive to stop
                    if self.stop.wait(0.05):
                        return
                shard.ensure(epoch)
            epoch, index = epoch + 1, 0
            while self.producing_epoch < epoch - 1:  # one epoch of look-ahead
                if self.stop.wait(0.2):
                    return

    def step_built(self, epoch: int, index: int) -> None:
        """After global batch `index` of training epoch `epoch` is built: let go of the shards it used last."""
        if len(self.loader.sources) == 1:
            return  # every epoch reads the same mask epoch: keep its shards
        if self._last_use is None or self._last_use[0] != epoch:
            self._last_use = (epoch, self._last_uses(epoch))
        for shard in self._last_use[1].pop(index, ()):
            shard.release_after(epoch)

    def _last_uses(self, epoch: int) -> dict[int, list[RemoteShard]]:
        """Global batch index -> the shards whose last use in training epoch `epoch` it is."""
        loader = self.loader
        source = loader.sources[epoch % len(loader.sources)]
        rows = loader._order(epoch)[: loader.batches_per_epoch(epoch) * loader.G]
        shard, _ = source._locate(rows)
        last = np.full(len(source.shards), -1, dtype=np.int64)
        np.maximum.at(last, shard, np.arange(len(rows), dtype=np.int64) // loader.G)
        by_batch: dict[int, list[RemoteShard]] = {}
        for s in np.flatnonzero(last >= 0):
            by_batch.setdefault(int(last[s]), []).append(source.shards[s])
        return by_batch
