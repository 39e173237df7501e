"""One memory-mapped shard of a dataset (docs/FORMAT.md), and the rows of several shards under one index.

A `Shard` is checked against its manifest entry when it is opened (size, Arrow structure, schema, row count,
list offsets) and, with verify='sha256', against its content hash before its first row is used. `RowSource`
gathers rows of a list of shards into batch columns with NumPy fancy indexing (the ragged list columns
through their offsets), never with a Python loop over tokens, and checks every gathered row structurally
(spanbert_data.rowcheck) before it can become a tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from spanbert_data.errors import DatasetError
from spanbert_data.files import HashCheck
from spanbert_data.location import resolve_inside
from spanbert_data.packing import OFFSET_GROUPS, WORD_STARTS, record_batch_columns
from spanbert_data.rowcheck import first_bad_row

LIST_COLUMNS = (
    "example_lengths", "mlm_positions", "mlm_labels", "sbo_positions",
    "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels",
)  # fmt: skip
# LIST_COLUMNS by their entries per row, the same within a group (docs/FORMAT.md; packing.record_batch_columns checks
# it when a shard is opened): one set of copy indices per group serves all its columns.
# The optional word-start flags of MLM targets (a subword tokenizer's dataset) travel with the MLM group.
LIST_GROUPS = tuple(tuple(c for c in group if c in LIST_COLUMNS or c == WORD_STARTS[0]) for group in OFFSET_GROUPS)


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

    # The download thread's interface (spanbert_train.remote_data.RemoteShard), for a local shard in a blend with a
    # dataset in object storage: nothing to download or let go of; `ensure` hashes it ahead of need.
    def prefetch(self, chunk: int) -> None:
        """A local shard is already here."""

    def downloaded(self) -> bool:
        return True

    def ensure(self, chunk: int | None) -> None:
        self.verify_bytes()

    def release_after(self, chunk: int) -> None:
        """A local shard holds no place in the cache."""


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
        groups = []  # (shard, its rows' local indices, their places in `rows`), one per shard the rows touch
        for s in np.unique(shard):
            self.shards[s].verify_bytes()
            at = np.flatnonzero(shard == s)
            groups.append((self.shards[s], local[at], at))
        # dtypes and width from a shard of these rows (all shards of a blend share them): touching another shard
        # would make a remote one download
        ref = groups[0][0] if groups else self.shards[0]
        first = ref.columns["input_ids"]
        ids = np.empty((len(rows), first.shape[1]), dtype=first.dtype)
        for sh, loc, at in groups:
            ids[at] = sh.columns["input_ids"][loc]
        out = {"input_ids": ids}
        for group in LIST_GROUPS:
            group = tuple(name for name in group if name in ref.columns)  # every shard or none has word starts
            lengths, starts = np.empty(len(rows), dtype=np.int64), []
            for sh, loc, at in groups:
                off = sh.columns[group[0]][0]
                starts.append(off[loc].astype(np.int64))
                lengths[at] = off[loc + 1] - starts[-1]
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values = {name: np.empty(int(offsets[-1]), dtype=ref.columns[name][1].dtype) for name in group}
            for (sh, _, at), start in zip(groups, starts, strict=True):
                n = lengths[at]
                # Ragged copy: entry j of row i goes from start[i] + j to offsets[i] + j.
                within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
                src = np.repeat(start, n) + within
                dst = np.repeat(offsets[at], n) + within
                head = int(sh.columns[group[0]][0][0])
                for name in group:  # a column's offsets are the first one's plus the difference of their starts
                    off, val = sh.columns[name]
                    values[name][dst] = val[src if off[0] == head else src + (int(off[0]) - head)]
            out.update((name, (offsets, values[name])) for name in group)
        if check:
            vocab = ref.vocab_size
            found = first_bad_row(out, vocab if vocab is not None else np.iinfo(np.int64).max)
            if found is not None:
                i, what = found
                bad = self.shards[shard[i]]
                raise DatasetError(f"{bad.name}: row {local[i]}: {what}; the shard is corrupt{bad.advice}")
        return out
