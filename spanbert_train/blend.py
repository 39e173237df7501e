"""The datasets of a run, and which of their rows each global batch takes (DESIGN §7, §8).

A run trains on one dataset or on a *blend* of several, each with a weight (`--data A --data B --data-weights
3,1`); one dataset is the blend of one.

**Each dataset's own row stream.** A dataset's rows come in exactly the order of a run on it alone: training
epoch e of the dataset reads its mask epoch e mod K in the order `epoch_order(seed, e, rows)` and takes the first
⌊rows / G⌋·G rows of it (whole global batches' worth, G the global batch size; the rest of that permutation is
not used in epoch e, as in a run on the dataset alone). Its epochs follow each other without a gap. In a blend,
"epoch e of a dataset" means exactly this: it ends when the dataset has given those rows, at whatever step that
is, and the dataset goes on with its next epoch (the next mask epoch) independently of the others. One global
batch may hold the last rows of an epoch of one dataset and the first rows of its next.

**The blend.** The schedule (spanbert_train.schedule) says which dataset each row of the global row stream comes
from; that row is the next one of the dataset's stream. Global batch b is global rows b·G … (b+1)·G-1, so the
rows of every batch are a pure function of (seed, b, G, the weights, the datasets' row counts): the same for any
rank count or micro-batch, and a run resumed at batch b goes on with them. With one dataset, or weights such as
1,0, this is the single-dataset order exactly.

The training shards of every dataset and mask epoch are addressed by one index (one RowSource), so a global batch
that mixes datasets is gathered, checked and counted like any other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np

from spanbert_train.errors import ConfigError
from spanbert_train.schedule import Schedule
from spanbert_train.shard import RowSource

BLOCK_ROWS = 1 << 20  # rows handled at once when a whole epoch's order is scanned (bounds the memory of a scan)


def epoch_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """The row order of training epoch `epoch`: a permutation that depends only on (seed, epoch, n_rows)."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def manifest_digest(dataset) -> str:
    """SHA-256 of a dataset's manifest (as parsed): the same for a directory and its copy in a bucket."""
    return hashlib.sha256(json.dumps(dataset.manifest, sort_keys=True).encode()).hexdigest()


class Blend:
    """The datasets of a run (spanbert_train.data.Dataset) with their integer weights (spanbert_train.weights),
    checked to fit together: one tokenizer (by its SHA-256) and one row length, each dataset once."""

    def __init__(self, datasets: list, weights: list[int] | None = None, names: list[str] | None = None):
        self.datasets = list(datasets)
        self.names = list(names) if names is not None else [str(d.root) for d in self.datasets]
        self.weights = list(weights) if weights is not None else [1] * len(self.datasets)
        self.schedule = Schedule(self.weights)
        self.digests = [manifest_digest(d) for d in self.datasets]
        self._check_compatible()
        shards, self.base = [], []  # base[k][m]: index of the first row of dataset k's mask epoch m in `source`
        for ds in self.datasets:
            first = sum(s.rows for s in shards)
            self.base.append(first + np.concatenate([[0], np.cumsum([ds.rows(m) for m in range(ds.mask_epochs)])]))
            shards += [s for epoch in ds.epochs for s in epoch]
        self.source = RowSource(shards)
        valid = [s for ds in self.datasets for s in ds.valid]
        self.valid = RowSource(valid) if valid else None

    def _check_compatible(self) -> None:
        first, name = self.datasets[0], self.names[0]
        token = first.manifest["tokenizer"].get("sha256")
        for ds, other, digest in zip(self.datasets[1:], self.names[1:], self.digests[1:], strict=True):
            if ds.manifest["tokenizer"].get("sha256") != token or ds.vocab_size != first.vocab_size:
                raise ConfigError(
                    f"{other} was built with another tokenizer than {name} (tokenizer sha256 "
                    f"{str(ds.manifest['tokenizer'].get('sha256'))[:12]}… vs {str(token)[:12]}…); datasets mixed in "
                    "one run must share it: build them with the same --tokenizer"
                )
            if ds.max_seq_len != first.max_seq_len:
                raise ConfigError(f"{other} has rows of {ds.max_seq_len} slots, {name} of {first.max_seq_len}; "
                                  "datasets mixed in one run must be built with the same --max-seq-len")  # fmt: skip
            if digest in self.digests[: self.names.index(other)]:
                twin = self.names[self.digests.index(digest)]
                raise ConfigError(f"{other} and {twin} are the same dataset (identical manifests); give it once")

    def training_shards(self) -> list:
        """The training shards of the datasets that give rows (weight > 0)."""
        return [s for ds, w in zip(self.datasets, self.weights, strict=True) if w for epoch in ds.epochs for s in epoch]

    def describe(self) -> list[dict]:
        """The datasets as a checkpoint records them: name, integer weight, manifest digest."""
        return [{"path": n, "weight": w, "manifest_sha256": d}
                for n, w, d in zip(self.names, self.weights, self.digests, strict=True)]  # fmt: skip

    def summary(self, global_batch: int) -> str:
        """One line: each dataset's share of a global batch."""
        total = sum(self.weights)
        return "data: a blend, rows per global batch by weight (spanbert_train.schedule): " + ", ".join(
            f"{n} {w}/{total} ({global_batch * w / total:.4g} rows)"
            for n, w in zip(self.names, self.weights, strict=True))  # fmt: skip

    def check_resume(self, saved: list[dict], checkpoint) -> None:
        """ConfigError unless the checkpoint's datasets (`saved`: its `describe()`) are these, with these weights: the
        schedule and each dataset's place in its stream depend on both. A single dataset resumes as before blends,
        on any dataset of its tokenizer (checked by the trainer)."""
        if len(saved) == 1 and len(self.datasets) == 1:
            return
        now = [(d["weight"], d["manifest_sha256"]) for d in self.describe()]
        if [(d.get("weight"), d.get("manifest_sha256")) for d in saved] != now:
            was = " + ".join(f"{d.get('path', '?')} (weight {d.get('weight')})" for d in saved)
            raise ConfigError(f"{checkpoint}: checkpoint was trained on {was}; resume with the same --data datasets "
                              "(the same builds, in the same order) and --data-weights")  # fmt: skip

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()


class DatasetStream:
    """One dataset's row stream for global batch size G (the module docstring): position p -> row in `source`."""

    def __init__(self, dataset, base: np.ndarray, global_batch: int, seed: int):
        self.base, self.G, self.seed, self.K = base, global_batch, seed, dataset.mask_epochs
        self.n_rows = [dataset.rows(m) for m in range(self.K)]
        self.first = np.concatenate([[0], np.cumsum([n // global_batch * global_batch for n in self.n_rows])])
        self.cycle = int(self.first[-1])  # stream rows of K consecutive epochs
        self._orders: dict[int, np.ndarray] = {}

    def batches(self, epoch: int) -> int:
        """Global batches' worth of rows in training epoch `epoch`."""
        return int(self.first[epoch % self.K + 1] - self.first[epoch % self.K]) // self.G

    def start(self, epoch: int) -> int:
        """Stream position of the first row of training epoch `epoch`."""
        return epoch // self.K * self.cycle + int(self.first[epoch % self.K])

    def locate(self, p):
        """(training epoch, offset within it) of stream position(s) p."""
        q, within = np.divmod(p, self.cycle)
        m = np.searchsorted(self.first, within, side="right") - 1
        return q * self.K + m, within - self.first[m]

    def order(self, epoch: int) -> np.ndarray:
        """epoch_order of training epoch `epoch`, memoised: a permutation of millions of rows takes ~0.1-1 s, far
        too long to redo every step. The few most recent epochs are kept (the verifier looks ahead)."""
        order = self._orders.get(epoch)
        if order is None:
            order = epoch_order(self.seed, epoch, self.n_rows[epoch % self.K])
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 2} | {epoch: order}
        return order

    def rows(self, p: np.ndarray) -> np.ndarray:
        """Indices into the blend's RowSource of stream positions p (ascending)."""
        epoch, offset = self.locate(p)
        if epoch[0] == epoch[-1]:  # the usual case: all in one epoch
            return self.base[epoch[0] % self.K] + self.order(int(epoch[0]))[offset]
        out = np.empty(p.size, dtype=np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self.base[e % self.K] + self.order(int(e))[offset[sel]]
        return out


class BlendOrder:
    """The rows of every global batch of a blend for global batch size G and seed (the module docstring)."""

    def __init__(self, blend: Blend, global_batch: int, seed: int):
        self.blend, self.G = blend, global_batch
        self.streams = [DatasetStream(ds, base, global_batch, seed) if w else None
                        for ds, base, w in zip(blend.datasets, blend.base, blend.weights, strict=True)]  # fmt: skip

    def rows(self, b0: int, b1: int) -> np.ndarray:
        """Indices into blend.source of global batches b0 .. b1-1, shape (b1-b0, G)."""
        dataset, position = self.blend.schedule.assign(b0 * self.G, b1 * self.G)
        if len(self.streams) == 1:
            return self.streams[0].rows(position).reshape(-1, self.G)
        out = np.empty(position.size, dtype=np.int64)
        for k in np.unique(dataset):
            sel = dataset == k
            out[sel] = self.streams[k].rows(position[sel])
        return out.reshape(-1, self.G)

    def blocks(self, b0: int, b1: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first batch, rows) of global batches b0 .. b1-1 in blocks of about BLOCK_ROWS rows."""
        step = max(1, BLOCK_ROWS // self.G)
        for lo in range(b0, b1, step):
            yield lo, self.rows(lo, min(lo + step, b1))

    def consumed(self, batch: int) -> np.ndarray:
        """Rows each dataset has given before global batch `batch`."""
        return self.blend.schedule.counts(batch * self.G)

    def position(self, k: int, batch: int) -> tuple[int, int]:
        """(training epoch, row offset within it) of dataset k's next row at global batch `batch`."""
        epoch, offset = self.streams[k].locate(int(self.consumed(batch)[k]))
        return int(epoch), int(offset)

    def chunk_end(self, batch: int) -> int:
        """The first global batch after `batch` in which some dataset starts a training epoch other than the one it is
        in at `batch` (at least batch + 1): the unit of the verifier's look-ahead (spanbert_train.verify_ahead)."""
        counts, end = self.consumed(batch), None
        for k, stream in enumerate(self.streams):
            if stream is not None:
                epoch, _ = stream.locate(int(counts[k]))
                starts = self.blend.schedule.row_of(k, stream.start(int(epoch) + 1)) // self.G
                end = starts if end is None else min(end, starts)
        return max(batch + 1, end)

    def batch_of(self, epoch: int, index: int) -> int:
        """The global batch of position (epoch, batch within it) of a single dataset (checkpoints before blends)."""
        if len(self.streams) != 1:
            raise ValueError("an (epoch, batch) position names a global batch only for a single dataset")
        return self.streams[0].start(epoch) // self.G + index
