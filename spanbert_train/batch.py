"""The batch the model consumes, made from shard rows (docs/FORMAT.md, pass 2) with NumPy only.

Shard columns hold row-relative slots; the model works on the flattened ``B*T`` token stream, so
every target and boundary slot becomes a flat index ``row * T + slot`` here, once, on the loader side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from spanbert_data.config import SBO_OFFSETS

ListColumn = tuple[np.ndarray, np.ndarray]
"""A list column of B rows as (offsets int[B+1], values): row b owns values[offsets[b]:offsets[b+1]]."""


@dataclass
class Batch:
    """One batch of packed rows, ready for :class:`spanbert_train.model.SpanBertForPreTraining`.

    Attributes:
        input_ids: (B, T) int64 masked input ids, ``[PAD]`` after each row's last example.
        position_ids: (B, T) int64, restarting at 0 in every example; 0 on padding.
        example_ids: (B, T) int64 sequence number of each slot in the flattened stream; examples are
            numbered in order and each row's padding tail forms a group of its own.
        cu_seqlens: (N+1,) int32 boundaries of those N sequences in the flattened ``B*T`` stream.
        max_seqlen: length of the longest of the N sequences.
        mlm_index: (M,) int64 flat index into ``B*T`` of every MLM target.
        mlm_labels: (M,) int64 original token at each MLM target.
        sbo_index: (S,) int64 flat index of every SBO target.
        sbo_left, sbo_right: (S,) int64 flat index of the target's outside boundary tokens.
        sbo_offsets: (S,) int64 offset of the target within its span, 0..14.
        sbo_labels: (S,) int64 original token at each SBO target.
        num_tokens: number of non-padding slots (the unit of throughput and MFU).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    example_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    mlm_index: torch.Tensor
    mlm_labels: torch.Tensor
    sbo_index: torch.Tensor
    sbo_left: torch.Tensor
    sbo_right: torch.Tensor
    sbo_offsets: torch.Tensor
    sbo_labels: torch.Tensor
    num_tokens: int

    def _map(self, fn) -> Batch:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = fn(value) if isinstance(value, torch.Tensor) else value
        return Batch(**values)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy with every tensor in page-locked memory (for asynchronous host-to-device copies)."""
        return self._map(lambda t: t.pin_memory())


def _check_column(name: str, column: ListColumn, rows: int) -> tuple[np.ndarray, np.ndarray]:
    offsets, values = (np.asarray(a) for a in column)
    if offsets.ndim != 1 or offsets.shape[0] != rows + 1:
        raise ValueError(f"{name}: offsets must have shape ({rows + 1},), got {offsets.shape}")
    if values.ndim != 1:
        raise ValueError(f"{name}: values must be one-dimensional, got shape {values.shape}")
    offsets = offsets.astype(np.int64, copy=False)
    if offsets[0] != 0 or offsets[-1] != values.shape[0] or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name}: offsets must rise from 0 to len(values)={values.shape[0]}")
    return offsets, values


def _flat_index(name: str, offsets: np.ndarray, slots: np.ndarray, seq_len: int) -> np.ndarray:
    """Row-relative slots -> flat indices ``row * seq_len + slot`` into the flattened batch."""
    slots = slots.astype(np.int64)
    if slots.size and (slots.min() < 0 or slots.max() >= seq_len):
        raise ValueError(f"{name}: slots must lie in 0..{seq_len - 1}")
    rows = np.repeat(np.arange(offsets.shape[0] - 1, dtype=np.int64), np.diff(offsets))
    return rows * seq_len + slots


def _sequences(lengths_offsets: np.ndarray, lengths: np.ndarray, rows: int, seq_len: int):
    """Sequence lengths of the flattened stream (every example, then each row's padding tail) and pad flags."""
    lengths = lengths.astype(np.int64)
    if lengths.size and lengths.min() <= 0:
        raise ValueError("example_lengths: every example must have at least one token")
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    used = cumulative[lengths_offsets[1:]] - cumulative[lengths_offsets[:-1]]  # (B,) slots filled per row
    if np.any(used > seq_len):
        bad = int(np.argmax(used > seq_len))
        raise ValueError(f"example_lengths: row {bad} holds {used[bad]} tokens but rows have {seq_len} slots")
    # Row b's examples move right by b, because each earlier row added its padding tail as one sequence.
    row_of_example = np.repeat(np.arange(rows, dtype=np.int64), np.diff(lengths_offsets))
    seq_lens = np.empty(lengths.shape[0] + rows, dtype=np.int64)
    is_pad = np.zeros(seq_lens.shape[0], dtype=bool)
    seq_lens[np.arange(lengths.shape[0]) + row_of_example] = lengths
    pad_slot = lengths_offsets[1:] + np.arange(rows)
    seq_lens[pad_slot] = seq_len - used
    is_pad[pad_slot] = True
    keep = seq_lens > 0  # a full row has no padding sequence
    return seq_lens[keep], is_pad[keep], int(used.sum())


def make_batch(
    input_ids: np.ndarray,
    example_lengths: ListColumn,
    mlm_positions: ListColumn,
    mlm_labels: ListColumn,
    sbo_positions: ListColumn,
    sbo_left: ListColumn,
    sbo_right: ListColumn,
    sbo_offsets: ListColumn,
    sbo_labels: ListColumn,
) -> Batch:
    """Build a :class:`Batch` from the columns of B shard rows (docs/FORMAT.md), without a per-token loop.

    Args:
        input_ids: (B, T) token ids (uint16 or int32 as stored).
        example_lengths, mlm_positions, ...: each a list column ``(offsets[B+1], values)`` holding
            row-relative slots (positions) or values (labels, offsets) exactly as in the shard.

    Raises:
        ValueError: when a column is malformed (offsets, out-of-row slots, overfull rows, bad SBO offsets).
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (B, T) with T > 0, got {input_ids.shape}")
    rows, seq_len = input_ids.shape

    len_offsets, lengths = _check_column("example_lengths", example_lengths, rows)
    seq_lens, is_pad, num_tokens = _sequences(len_offsets, lengths, rows, seq_len)
    cu_seqlens = np.concatenate([[0], np.cumsum(seq_lens)])
    seq_of_slot = np.repeat(np.arange(seq_lens.shape[0], dtype=np.int64), seq_lens)  # (B*T,)
    positions = np.arange(rows * seq_len, dtype=np.int64) - cu_seqlens[:-1][seq_of_slot]
    positions[is_pad[seq_of_slot]] = 0

    mlm_off, mlm_slots = _check_column("mlm_positions", mlm_positions, rows)
    mlm_lab_off, mlm_lab = _check_column("mlm_labels", mlm_labels, rows)
    if not np.array_equal(mlm_off, mlm_lab_off):
        raise ValueError("mlm_labels: offsets differ from mlm_positions (one label per target)")

    sbo_off, sbo_slots = _check_column("sbo_positions", sbo_positions, rows)
    sbo = {}
    for name, column in (("sbo_left", sbo_left), ("sbo_right", sbo_right), ("sbo_offsets", sbo_offsets),
                         ("sbo_labels", sbo_labels)):
        offsets, values = _check_column(name, column, rows)
        if not np.array_equal(offsets, sbo_off):
            raise ValueError(f"{name}: offsets differ from sbo_positions (one entry per SBO target)")
        sbo[name] = values
    span_offsets = sbo["sbo_offsets"].astype(np.int64)
    if span_offsets.size and (span_offsets.min() < 0 or span_offsets.max() >= SBO_OFFSETS):
        raise ValueError(f"sbo_offsets: values must lie in 0..{SBO_OFFSETS - 1} (SPEC §3)")

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))

    return Batch(
        input_ids=tensor(input_ids),
        position_ids=tensor(positions.reshape(rows, seq_len)),
        example_ids=tensor(seq_of_slot.reshape(rows, seq_len)),
        cu_seqlens=torch.from_numpy(cu_seqlens.astype(np.int32)),
        max_seqlen=int(seq_lens.max()),
        mlm_index=tensor(_flat_index("mlm_positions", mlm_off, mlm_slots, seq_len)),
        mlm_labels=tensor(mlm_lab),
        sbo_index=tensor(_flat_index("sbo_positions", sbo_off, sbo_slots, seq_len)),
        sbo_left=tensor(_flat_index("sbo_left", sbo_off, sbo["sbo_left"], seq_len)),
        sbo_right=tensor(_flat_index("sbo_right", sbo_off, sbo["sbo_right"], seq_len)),
        sbo_offsets=tensor(span_offsets),
        sbo_labels=tensor(sbo["sbo_labels"]),
        num_tokens=num_tokens,
    )
