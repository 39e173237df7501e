"""The loader's verifier thread: every shard a rank reads is checked before its first row is used, ahead of need.

Hashing a shard takes a fraction of a second (bench/loader.py measures it), so hashing inside the thread that
builds batches would stall it. This thread runs beside it instead (`hashlib` releases the GIL) and works in
the order the rank will need the shards:

1. the validation shards (hash, then every row structurally), before the first training step;
2. the shards that this rank reads in the current *chunk*, in order of first use;
3. those of the next chunk once the batch builder has entered the current one (one chunk of look-ahead:
   a run that ends early does not hash mask epochs it never reaches).

A chunk is the run of global batches in which no dataset changes training epoch (BlendOrder.chunk_end): with one
dataset, one training epoch; in a blend, it ends wherever some dataset starts its next epoch, so each dataset's
shards are hashed in its own order of use, one epoch ahead of its own need.

The batch builder still calls `Shard.verify_bytes()` itself before it gathers rows (a no-op once done, a
wait when the hash is in flight), so correctness never depends on this thread keeping ahead; only speed
does. The first problem found is kept in `error`; the builder raises it before its next step, so training
stops as soon as a bad shard is known rather than when its row comes up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from spanbert_train.shard import RowSource, Shard

VALID_CHUNK = 1024  # validation rows checked per gather


class VerifyAhead:
    """Check shards for one rank ahead of its batch builder (see the module docstring)."""

    def __init__(self, training: list[Shard], valid: RowSource | None, plan: Callable[[int, int], list[Shard]],
                 start: int, chunk_end: Callable[[int], int], stop: threading.Event):  # fmt: skip
        """`training`: every training shard that will be read; `valid`: the validation rows; `plan(first, end)`: the
        shards this rank reads in global batches first .. end-1, in order of first use; `start`: the first global
        batch; `chunk_end(b)`: the end of the chunk that begins at global batch b."""
        self.training, self.valid, self.plan, self.start_at, self.stop = training, valid, plan, start, stop
        self.chunk_end = chunk_end
        self.error: BaseException | None = None
        self.valid_checked = threading.Event()  # set once the validation rows are checked (or failed)
        self.producing_batch = start  # the global batch the batch builder is at (it updates this)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spanbert-verify", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def step_built(self, batch: int) -> None:
        """Called by the batch builder after each global batch it built (a remote dataset lets go of shards here)."""

    def _run(self) -> None:
        try:
            self._check_validation_rows()
        except BaseException as e:
            self.error = e
        finally:
            self.valid_checked.set()
        if self.error is None:
            try:
                self._hash_training_shards()
            except BaseException as e:
                self.error = e

    def _check_validation_rows(self) -> None:
        """Hash the validation shards and check every row: evaluation then never meets a bad row mid-run, where
        one rank failing alone would leave the others waiting in a collective."""
        source = self.valid
        if source is None:
            return
        for lo in range(0, len(source), VALID_CHUNK):
            if self.stop.is_set():
                return
            source.gather(np.arange(lo, min(lo + VALID_CHUNK, len(source)), dtype=np.int64))

    def _pending(self) -> bool:
        return any(not shard.verified for shard in self.training)

    def _hash_training_shards(self) -> None:
        first = self.start_at
        while self._pending():
            end = self.chunk_end(first)
            for shard in self.plan(first, end):
                if self.stop.is_set():
                    return
                shard.verify_bytes()
            done, first = first, end
            while self.producing_batch < done:  # one chunk of look-ahead
                if self.stop.wait(0.2):
                    return
