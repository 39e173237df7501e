"""Packing examples into fixed-length training rows, and the row columns of docs/FORMAT.md (pass 2).

An *example* is `[CLS] block [SEP]` (SPEC §1). Several whole examples share one row of `row_len`
(= max_seq_len) slots, back to back from slot 0, `[PAD]` after the last one; the trainer keeps
attention and positions per example, so packing changes nothing but the padding wasted.

Pipeline of this module:
  pack_examples       example lengths -> (row, first slot) of every example (best-fit decreasing)
  assemble_rows       masked blocks + placement -> flat NumPy columns (content-relative target
                      positions become row-relative slots: slot_of + 1 + position)
  rows_to_record_batch / record_batch_columns
                      those columns <-> one Arrow record batch, zero-copy both ways where Arrow allows
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from spanbert_data.rowcheck import offsets_problem

# List columns in schema order, with the name of the column whose offsets they share.
_ID = "ID"  # stands for the id type (uint16 or int32) in the table below
_LIST_COLUMNS = (
    ("example_lengths", pa.uint16()),
    ("block_ids", pa.int64()),
    ("mlm_positions", pa.uint16()),
    ("mlm_labels", _ID),
    ("sbo_positions", pa.uint16()),
    ("sbo_left", pa.uint16()),
    ("sbo_right", pa.uint16()),
    ("sbo_offsets", pa.uint8()),
    ("sbo_labels", _ID),
)
# The optional last column: per MLM target, does its original token start a word (docs/FORMAT.md). Written for
# every tokenizer whose word starts are not a function of the token id (all but WordPiece).
WORD_STARTS = ("mlm_word_starts", pa.uint8())
# Columns that describe the same items must have identical offsets (one row's examples, MLM targets, SBO targets).
OFFSET_GROUPS = (("example_lengths", "block_ids"), ("mlm_positions", "mlm_labels", WORD_STARTS[0]),
                 ("sbo_positions", "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels"))
# Slots are stored as uint16 and example lengths too, so a row can have at most 65,535 slots.
MAX_ROW_LEN = 65535


def _id_arrow_type(id_type) -> pa.DataType:
    """uint16 or int32 (FORMAT.md `ID`) from a NumPy dtype, an Arrow type or their names."""
    t = id_type if isinstance(id_type, pa.DataType) else pa.from_numpy_dtype(np.dtype(id_type))
    if t not in (pa.uint16(), pa.int32()):
        raise ValueError(f"token id type must be uint16 or int32 (docs/FORMAT.md), got {t}")
    return t


def TRAINING_ROW_SCHEMA(row_len: int, id_type, word_starts: bool = False) -> pa.Schema:  # noqa: N802 (a schema constant, built per row_len)
    """The Arrow schema of pass-2 training rows (docs/FORMAT.md) for `row_len` slots and token ids of `id_type`,
    with the `mlm_word_starts` column when `word_starts`."""
    if not 3 <= int(row_len) <= MAX_ROW_LEN:
        raise ValueError(f"max_seq_len must be in 3..{MAX_ROW_LEN} (slots are uint16), got {row_len}")
    id_t = _id_arrow_type(id_type)
    fields = [pa.field("input_ids", pa.list_(id_t, int(row_len)), nullable=False)]
    for name, t in _LIST_COLUMNS + ((WORD_STARTS,) if word_starts else ()):
        fields.append(pa.field(name, pa.list_(id_t if t == _ID else t), nullable=False))
    return pa.schema(fields)


def padding_fraction(lengths: np.ndarray, n_rows: int, row_len: int) -> float:
    """Fraction of the `n_rows * row_len` slots not covered by an example (0.0 when there are no rows)."""
    total = n_rows * row_len
    return 0.0 if total == 0 else 1.0 - float(np.sum(lengths, dtype=np.int64)) / total


# --------------------------------------------------------------------------------------------- packing
def rows_lower_bound(lengths: np.ndarray, row_len: int) -> int:
    """Martello-Toth L2: no packing of these example lengths into rows of `row_len` uses fewer rows.

    It turns a padding figure into a verdict: the packer's padding against the least any packer could get."""
    L = np.sort(np.asarray(lengths, dtype=np.int64))
    best = int(np.ceil(L.sum() / row_len))
    for a in [0, *np.unique(L[L <= row_len // 2]).tolist()]:
        big = L > row_len - a  # cannot share a row with any item of size >= a
        mid = (L > row_len / 2) & ~big  # one per row
        small = (L >= a) & (L <= row_len / 2)
        room = mid.sum() * row_len - L[mid].sum()
        best = max(best, int(big.sum() + mid.sum() + max(0, np.ceil((L[small].sum() - room) / row_len))))
    return best


@njit(cache=True)
def _best_fit_decreasing(lengths, order, row_len):
    """Place examples, in `order`, each into the open row with the least free space that still fits it.

    Open rows are kept in buckets by free space (head[f]: a stack of rows with exactly f free slots,
    linked through nxt), so a placement scans at most row_len buckets: O(n * row_len) worst case.
    Among rows with equal free space the most recently filled one wins (the top of the stack).
    """
    n = lengths.shape[0]
    row_of = np.empty(n, np.int64)
    slot_of = np.empty(n, np.int64)
    free = np.empty(n, np.int64)  # free slots of each row; at most n rows
    nxt = np.empty(n, np.int64)
    head = np.full(row_len + 1, -1, np.int64)
    n_rows = 0
    for j in range(n):
        i = order[j]
        need = lengths[i]
        f = need
        while f < row_len and head[f] < 0:  # an open row always holds an example, so never has row_len free
            f += 1
        if f < row_len:
            r = head[f]
            head[f] = nxt[r]
        else:
            r = n_rows
            n_rows += 1
            free[r] = row_len
        row_of[i] = r
        slot_of[i] = row_len - free[r]
        free[r] -= need
        nxt[r] = head[free[r]]
        head[free[r]] = r
    return row_of, slot_of, n_rows


def pack_examples(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pack examples of the given lengths (content + 2, each 1..row_len) into rows of `row_len` slots.

    Best-fit decreasing: examples are taken by decreasing length (ties by index) and each goes into
    the fullest open row that still has room, else a new row. The result is a pure function of
    `lengths`. Inside a row, examples therefore lie by decreasing length, then index.
    Padding depends on how many short examples there are to fill the gaps next to long ones; give it
    as large a window of examples as memory allows (see bench/packing_padding.py).

    Returns (row_of int64[n], slot_of int64[n] = first slot of each example in its row, n_rows).
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"example lengths must be a 1-D integer array, got {lengths.dtype} of shape {lengths.shape}")
    if not 1 <= int(row_len) <= MAX_ROW_LEN:
        raise ValueError(f"max_seq_len must be in 1..{MAX_ROW_LEN}, got {row_len}")
    lengths = lengths.astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > row_len))
    if bad.size:
        raise ValueError(f"example {bad[0]} has length {lengths[bad[0]]}; every example ([CLS] block [SEP]) must be "
                         f"1..max_seq_len={row_len} slots long (blocks hold at most max_seq_len - 2 tokens)")
    order = np.argsort(-lengths, kind="stable")  # decreasing length, ties by index
    row_of, slot_of, n_rows = _best_fit_decreasing(lengths, order, int(row_len))
    return row_of, slot_of, int(n_rows)


# --------------------------------------------------------------------------------------------- assembly
@njit(cache=True)
def _fill_input_ids(out, row_of, slot_of, block_offsets, ids, cls_id, sep_id):
    """out[row, slot:slot+n+2] = [CLS] block [SEP] for every example (out is pre-filled with [PAD])."""
    for i in range(row_of.shape[0]):
        r = row_of[i]
        s = slot_of[i]
        out[r, s] = cls_id
        lo = block_offsets[i]
        n = block_offsets[i + 1] - lo
        for p in range(n):
            out[r, s + 1 + p] = ids[lo + p]
        out[r, s + 1 + n] = sep_id


@njit(cache=True)
def _gather_segments(order, src_offsets, values, shift, out):
    """Concatenate the segments values[src_offsets[i]:src_offsets[i+1]] for i in `order`, adding shift[i]."""
    j = 0
    for t in range(order.shape[0]):
        i = order[t]
        sh = shift[i]
        for p in range(src_offsets[i], src_offsets[i + 1]):
            out[j] = values[p] + sh
            j += 1


def _check_segments(name: str, offsets, n_blocks: int, n_values: int) -> np.ndarray:
    offsets = np.asarray(offsets)
    if offsets.shape != (n_blocks + 1,) or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array of n_blocks + 1 = {n_blocks + 1} offsets, "
                         f"got {offsets.dtype} of shape {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != n_values or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name} must rise from 0 to the number of values ({n_values})")
    return offsets.astype(np.int64, copy=False)


def _owner(offsets: np.ndarray) -> np.ndarray:
    """Block index of every value of a segmented array."""
    return np.repeat(np.arange(offsets.size - 1), np.diff(offsets))


def _check_targets(name, positions, content_len, owner):
    """Target positions must be content-relative (0..n-1 in their block) and strictly ascending per block."""
    if np.any(positions < 0) or np.any(positions >= content_len[owner]):
        raise ValueError(f"{name}: a position lies outside its block's content (0..n-1)")
    same_block = owner[1:] == owner[:-1]
    if np.any(np.diff(positions.astype(np.int64))[same_block] <= 0):
        raise ValueError(f"{name}: positions must be strictly ascending within each block")


def _check_fits(name: str, values: np.ndarray, dtype: np.dtype) -> None:
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ValueError(f"{name}: values do not fit the token id type {dtype} (vocab > 65,536 needs int32)")


def _check_placement(lengths, row_of, slot_of, n_rows, row_len) -> np.ndarray:
    """Examples must lie inside their rows without overlap; returns the examples sorted by (row, slot)."""
    if row_of.shape != lengths.shape or slot_of.shape != lengths.shape:
        raise ValueError("row_of and slot_of must have one entry per block")
    if np.any(row_of < 0) or np.any(row_of >= n_rows) or np.any(slot_of < 0) or np.any(slot_of + lengths > row_len):
        raise ValueError(f"an example lies outside its row (n_rows={n_rows}, max_seq_len={row_len})")
    order = np.lexsort((slot_of, row_of))
    r, s, end = row_of[order], slot_of[order], (slot_of + lengths)[order]
    if np.any((r[1:] == r[:-1]) & (s[1:] < end[:-1])):
        raise ValueError("two examples overlap in a row: row_of/slot_of do not come from pack_examples")
    return order


def assemble_rows(block_offsets, block_ids, masked_input_ids, mlm_offsets, mlm_positions, mlm_labels,
                  sbo_offsets, sbo_positions, sbo_left, sbo_right, sbo_k, sbo_labels,
                  row_of, slot_of, n_rows, row_len, cls_id, sep_id, pad_id, id_dtype, mlm_word_starts=None) -> dict:
    """Build every column of docs/FORMAT.md pass 2 for blocks placed by `pack_examples`.

    Inputs are per block b (b = 0..nb-1), all positions content-relative (0..n_b-1, no [CLS]):
    block b's masked content is masked_input_ids[block_offsets[b]:block_offsets[b+1]]; its MLM
    targets are mlm_positions/mlm_labels[mlm_offsets[b]:mlm_offsets[b+1]] and its SBO targets
    sbo_positions/left/right/k/labels[sbo_offsets[b]:sbo_offsets[b+1]] (here `sbo_offsets` are the
    segment offsets; the relative offsets k are `sbo_k`), positions strictly ascending per block.
    block_ids[b] is the block's global index.

    `mlm_word_starts` (bool per MLM target, optional) becomes the column of that name.

    Returns {"input_ids": (n_rows, row_len) array of id_dtype, and for every list column NAME:
    (offsets int32[n_rows+1], values)}; columns of one group share the same offsets array. Targets
    become row slots slot_of + 1 + position, ascending within each row (examples in slot order).
    """
    id_dtype = np.dtype(id_dtype)
    _id_arrow_type(id_dtype)
    if not 3 <= int(row_len) <= MAX_ROW_LEN:
        raise ValueError(f"max_seq_len must be in 3..{MAX_ROW_LEN}, got {row_len}")
    ids = np.asarray(masked_input_ids)
    block_ids = np.asarray(block_ids, dtype=np.int64)
    nb = block_ids.shape[0]
    block_offsets = _check_segments("block_offsets", block_offsets, nb, ids.shape[0])
    content_len = np.diff(block_offsets)
    lengths = content_len + 2
    row_of = np.asarray(row_of, dtype=np.int64)
    slot_of = np.asarray(slot_of, dtype=np.int64)
    order = _check_placement(lengths, row_of, slot_of, int(n_rows), int(row_len))
    _check_fits("masked_input_ids", ids, id_dtype)
    _check_fits("special token ids", np.array([cls_id, sep_id, pad_id]), id_dtype)

    mlm_positions, mlm_labels = np.asarray(mlm_positions), np.asarray(mlm_labels)
    sbo = [np.asarray(a) for a in (sbo_positions, sbo_left, sbo_right, sbo_k, sbo_labels)]
    mlm_offsets = _check_segments("mlm_offsets", mlm_offsets, nb, mlm_positions.shape[0])
    sbo_offsets = _check_segments("sbo_offsets", sbo_offsets, nb, sbo[0].shape[0])
    if mlm_labels.shape != mlm_positions.shape or any(a.shape != sbo[0].shape for a in sbo):
        raise ValueError("every MLM column and every SBO column must have one value per target")
    mlm_owner, sbo_owner = _owner(mlm_offsets), _owner(sbo_offsets)
    _check_targets("mlm_positions", mlm_positions, content_len, mlm_owner)
    _check_targets("sbo_positions", sbo[0], content_len, sbo_owner)
    for name, a in (("sbo_left", sbo[1]), ("sbo_right", sbo[2])):
        if np.any(a < 0) or np.any(a >= content_len[sbo_owner]):
            raise ValueError(f"{name}: an SBO boundary lies outside its block's content (SPEC §3)")
    if np.any(sbo[3] > 14):
        raise ValueError("sbo_k: relative offsets must be 0..14 (SPEC §3)")
    _check_fits("mlm_labels", mlm_labels, id_dtype)
    _check_fits("sbo_labels", sbo[4], id_dtype)

    input_ids = np.full((int(n_rows), int(row_len)), pad_id, dtype=id_dtype)  # (rows, row_len)
    _fill_input_ids(input_ids, row_of, slot_of, block_offsets, ids, cls_id, sep_id)

    examples_per_row = np.bincount(row_of, minlength=int(n_rows))
    ex_row_offsets = np.zeros(int(n_rows) + 1, np.int64)
    np.cumsum(examples_per_row, out=ex_row_offsets[1:])
    to_slot = slot_of + 1  # content position p of example i sits at slot slot_of[i] + 1 + p
    no_shift = np.zeros(nb, np.int64)

    def gather(src_offsets, values, dtype, shift):
        """Row offsets and concatenated values (examples in (row, slot) order) of one per-block column."""
        counts_in_order = np.diff(src_offsets)[order]
        cum = np.zeros(nb + 1, np.int64)
        np.cumsum(counts_in_order, out=cum[1:])
        if cum[-1] > np.iinfo(np.int32).max:
            raise ValueError("too many values for one shard (int32 list offsets); lower --rows-per-shard")
        out = np.empty(int(cum[-1]), dtype=dtype)
        _gather_segments(order, src_offsets, values, shift, out)
        return cum[ex_row_offsets].astype(np.int32), out

    ex_offsets = ex_row_offsets.astype(np.int32)
    unit = np.arange(nb + 1, dtype=np.int64)  # one item per example
    mlm_off, mlm_pos = gather(mlm_offsets, mlm_positions, np.uint16, to_slot)
    sbo_off, sbo_pos = gather(sbo_offsets, sbo[0], np.uint16, to_slot)
    extra = {}
    if mlm_word_starts is not None:
        flags = np.asarray(mlm_word_starts).astype(np.uint8)
        if flags.shape != mlm_positions.shape:
            raise ValueError("mlm_word_starts must have one value per MLM target")
        extra[WORD_STARTS[0]] = (mlm_off, gather(mlm_offsets, flags, np.uint8, no_shift)[1])
    return {
        "input_ids": input_ids,
        "example_lengths": (ex_offsets, lengths[order].astype(np.uint16)),
        "block_ids": (ex_offsets, gather(unit, block_ids, np.int64, no_shift)[1]),
        "mlm_positions": (mlm_off, mlm_pos),
        "mlm_labels": (mlm_off, gather(mlm_offsets, mlm_labels, id_dtype, no_shift)[1]),
        "sbo_positions": (sbo_off, sbo_pos),
        "sbo_left": (sbo_off, gather(sbo_offsets, sbo[1], np.uint16, to_slot)[1]),
        "sbo_right": (sbo_off, gather(sbo_offsets, sbo[2], np.uint16, to_slot)[1]),
        "sbo_offsets": (sbo_off, gather(sbo_offsets, sbo[3], np.uint8, no_shift)[1]),
        "sbo_labels": (sbo_off, gather(sbo_offsets, sbo[4], id_dtype, no_shift)[1]),
        **extra,
    }


# --------------------------------------------------------------------------------------------- Arrow
def rows_to_record_batch(columns: dict, row_len: int) -> pa.RecordBatch:
    """One Arrow record batch (TRAINING_ROW_SCHEMA) over the arrays of `assemble_rows`, without copying values."""
    input_ids = np.ascontiguousarray(columns["input_ids"])
    if input_ids.ndim != 2 or input_ids.shape[1] != row_len:
        raise ValueError(f"input_ids must have shape (rows, {row_len}), got {input_ids.shape}")
    schema = TRAINING_ROW_SCHEMA(row_len, input_ids.dtype, WORD_STARTS[0] in columns)
    arrays = [pa.FixedSizeListArray.from_arrays(pa.array(input_ids.reshape(-1)), int(row_len))]
    for field in list(schema)[1:]:
        if field.name not in columns:
            raise ValueError(f"training rows: column {field.name!r} is missing")
        offsets, values = columns[field.name]
        values = pa.array(np.ascontiguousarray(values), type=field.type.value_type)
        arrays.append(pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), values))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def record_batch_columns(batch: pa.RecordBatch) -> dict:
    """NumPy views of a training-row record batch (no copy): the inverse of `rows_to_record_batch`.

    Returns {"input_ids": (rows, row_len) array, NAME: (offsets int32[rows+1], values) for each list
    column}; row r's items are values[offsets[r]:offsets[r+1]] (offsets[0] may be > 0 in a slice).
    Raises ValueError naming any column that is missing, mistyped, holds nulls, whose offsets leave its values
    (`spanbert_data.rowcheck.offsets_problem`) or disagree with its group's, and the first bad row.
    """
    names = batch.schema.names
    if "input_ids" not in names:
        raise ValueError("training rows: column 'input_ids' is missing (docs/FORMAT.md, pass 2)")
    ids_type = batch.schema.field("input_ids").type
    if not pa.types.is_fixed_size_list(ids_type):
        raise ValueError(f"training rows: column 'input_ids' has type {ids_type}, expected fixed_size_list<ID>")
    expected = TRAINING_ROW_SCHEMA(ids_type.list_size, ids_type.value_type, WORD_STARTS[0] in names)
    out = {}
    for field in expected:
        if field.name not in names:
            raise ValueError(f"training rows: column {field.name!r} ({field.type}) is missing (docs/FORMAT.md)")
        actual = batch.schema.field(field.name).type
        if actual != field.type:
            raise ValueError(f"training rows: column {field.name!r} has type {actual}, expected {field.type}")
        col = batch.column(field.name)
        if col.null_count or col.values.null_count:
            raise ValueError(f"training rows: column {field.name!r} holds nulls")
        if field.name == "input_ids":
            row_len = ids_type.list_size
            flat = col.values.slice(col.offset * row_len, len(col) * row_len)
            out["input_ids"] = flat.to_numpy(zero_copy_only=True).reshape(len(col), row_len)  # (rows, row_len)
        else:
            offsets, values = col.offsets.to_numpy(zero_copy_only=True), col.values.to_numpy(zero_copy_only=True)
            problem = offsets_problem(field.name, offsets, len(values))  # damaged offsets would gather out of bounds
            if problem:
                raise ValueError(f"training rows: {problem}")
            out[field.name] = (offsets, values)
    for group in OFFSET_GROUPS:
        for name in (n for n in group[1:] if n in out):
            differ = np.flatnonzero(np.diff(out[name][0]) != np.diff(out[group[0]][0]))
            if differ.size:
                r = int(differ[0])
                raise ValueError(f"training rows: row {r}: column {name!r} has another number of entries than "
                                 f"{group[0]!r}")  # fmt: skip
    return out
