"""Pass 2 of the build: token store → span masking → packed training rows (docs/FORMAT.md).

The blocks of a split are taken in global block order and cut into shards of `rows_per_shard`
blocks; each shard is masked (SPEC §2–§3, keyed by global block index), packed into rows and
written with its marker. Shards are independent: any number of workers writes the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spanbert_data.files import atomic_write_json
from spanbert_data.masking import MaskingConfig, mask_blocks
from spanbert_data.packing import assemble_rows, pack_examples, rows_to_record_batch
from spanbert_data.shards import read_arrow_file, write_arrow_file


@dataclass(frozen=True)
class ShardPlan:
    split: str  # "train" or "valid"
    epoch: int
    index: int
    lo: int  # range into the split's ordered list of global block indices
    hi: int

    @property
    def path(self) -> str:
        folder = "valid" if self.split == "valid" else f"epoch-{self.epoch}"
        return f"{folder}/part-{self.index:05d}.arrow"

    @property
    def marker(self) -> str:
        return self.path[: -len(".arrow")] + ".json"


def plan_shards(n_train: int, n_valid: int, mask_epochs: int, rows_per_shard: int) -> list[ShardPlan]:
    plans = []
    for epoch in range(mask_epochs):
        for i, lo in enumerate(range(0, n_train, rows_per_shard)):
            plans.append(ShardPlan("train", epoch, i, lo, min(lo + rows_per_shard, n_train)))
    for i, lo in enumerate(range(0, n_valid, rows_per_shard)):
        plans.append(ShardPlan("valid", 0, i, lo, min(lo + rows_per_shard, n_valid)))
    return plans


class TokenStore:
    """All store parts, memory-mapped, addressed by global block index."""

    def __init__(self, out: Path, parts: list[dict]):
        self.offsets: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.docs: list[np.ndarray] = []
        self.starts: list[tuple[np.ndarray, int]] = []  # word_starts: (bit-packed bytes, first bit), where stored
        for part in parts:
            batch = read_arrow_file(out / part["path"])
            tokens = batch.column("tokens")
            self.offsets.append(tokens.offsets.to_numpy())
            self.values.append(tokens.values.to_numpy())
            self.docs.append(batch.column("doc").to_numpy())
            if "word_starts" in batch.schema.names:
                bits = batch.column("word_starts").values  # zero-copy: the bits stay packed until gathered
                self.starts.append((np.frombuffer(bits.buffers()[1], dtype=np.uint8), bits.offset))
        counts = [len(o) - 1 for o in self.offsets]
        self.first_block = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def n_blocks(self) -> int:
        return int(self.first_block[-1])

    @property
    def has_word_starts(self) -> bool:
        """True when word starts are stored beside the tokens (every tokenizer family but WordPiece)."""
        return bool(self.starts)

    def gather(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Content tokens of the given ascending global block indices: (flat ids, int64 offsets, and the stored
        word-start flags of those tokens, or None when the store has none)."""
        part_of = np.searchsorted(self.first_block, blocks, side="right") - 1
        pieces, lengths, flags = [], [], []
        for p in np.unique(part_of):
            local = blocks[part_of == p] - self.first_block[p]
            starts = self.offsets[p][local].astype(np.int64)
            ends = self.offsets[p][local + 1].astype(np.int64)
            n = ends - starts
            # Ragged gather without a Python loop over blocks: position of every token to copy.
            shift = np.repeat(starts - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
            at = np.arange(int(n.sum()), dtype=np.int64) + shift
            pieces.append(self.values[p][at])
            if self.starts:
                bits, first = self.starts[p]
                at += first
                flags.append((bits[at >> 3] >> (at & 7).astype(np.uint8)) & 1 == 1)  # Arrow's bit order: LSB first
            lengths.append(n)
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
        np.cumsum(lengths_all, out=offsets[1:])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, self.values[0].dtype if self.values else np.uint16)
        word_starts = (np.concatenate(flags) if flags else np.zeros(0, bool)) if self.starts else None
        return flat, offsets, word_starts


@dataclass
class RowContext:
    """What every pass-2 task needs besides its plan (pickled once per task)."""

    out: Path
    parts: list[dict]
    split_blocks: dict  # split -> int64 array of global block indices, ascending
    word_start: np.ndarray | None  # the WordPiece table; None: word starts come from the store
    cdf: np.ndarray
    special_ids: dict
    id_dtype: np.dtype
    masking: MaskingConfig
    seed: int
    max_seq_len: int


_STORE_CACHE: dict = {}


def _store(ctx: RowContext) -> TokenStore:
    key = (str(ctx.out), len(ctx.parts))
    if key not in _STORE_CACHE:
        _STORE_CACHE.clear()
        _STORE_CACHE[key] = TokenStore(ctx.out, ctx.parts)
    return _STORE_CACHE[key]


def build_shard(ctx: RowContext, plan: ShardPlan) -> dict:
    """Mask, pack and write one shard, then its marker; return the marker."""
    blocks = ctx.split_blocks[plan.split][plan.lo : plan.hi]
    tokens, offsets, stored = _store(ctx).gather(blocks)
    word_starts = stored if stored is not None else ctx.word_start[tokens]
    sp = ctx.special_ids
    masked = mask_blocks(
        tokens, offsets, blocks, word_starts, ctx.cdf, sp["mask"], ctx.masking, ctx.seed, plan.epoch
    )
    lengths = np.diff(offsets) + 2
    row_of, slot_of, n_rows = pack_examples(lengths, ctx.max_seq_len)
    columns = assemble_rows(
        offsets, blocks, masked.input_ids,
        masked.mlm_offsets, masked.mlm_positions, masked.mlm_labels,
        masked.sbo_offsets, masked.sbo_positions, masked.sbo_left, masked.sbo_right, masked.sbo_k, masked.sbo_labels,
        row_of, slot_of, n_rows, ctx.max_seq_len, sp["cls"], sp["sep"], sp["pad"], ctx.id_dtype,
        mlm_word_starts=masked.mlm_word_starts if stored is not None else None,
    )  # fmt: skip
    info = write_arrow_file(ctx.out / plan.path, rows_to_record_batch(columns, ctx.max_seq_len))
    marker = {
        "path": plan.path,
        "split": plan.split,
        "epoch": plan.epoch,
        "rows": int(n_rows),
        "examples": int(len(blocks)),
        "tokens": int(lengths.sum()),
        "mlm_targets": int(len(masked.mlm_positions)),
        "sbo_targets": int(len(masked.sbo_positions)),
        **info,
    }
    atomic_write_json(ctx.out / plan.marker, marker)
    return marker
