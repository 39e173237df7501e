"""Structural checks of training rows (docs/FORMAT.md, pass 2): what a corrupt shard must never slip past.

A shard whose bytes were damaged can still parse as Arrow. What reaches the model must then still be safe
to index with: every token id inside the vocabulary, every target slot inside its example, every row
within its slots. Two checks guarantee it, both cheap enough to run on every read:

- `offsets_problem`: a list column's offsets rise from >= 0 to at most the length of its values. Run once
  per shard when it is opened (`record_batch_columns`), it makes every later ragged gather stay in bounds.
- `first_bad_row`: one Numba pass over a batch of rows (in the loader, before any tensor is made). It
  checks the invariants the model's indexing relies on and reports the first row that breaks one, in words.

Both name the row, so the reader can name the shard and the row in one line.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from spanbert_data.config import SBO_OFFSETS

# Problem codes of the kernel; _describe turns them into words.
(ID_RANGE, EXAMPLE_SHORT, ROW_OVERFULL, MLM_ORDER, MLM_SLOT, MLM_LABEL,
 SBO_ORDER, SBO_SLOT, SBO_BOUNDARY, SBO_OFFSET, SBO_LABEL) = range(1, 12)  # fmt: skip


def offsets_problem(name: str, offsets: np.ndarray, n_values: int) -> str | None:
    """What is wrong with a list column's offsets (one line naming the first bad row), or None.

    Valid offsets start at >= 0, never decrease and end at most at `n_values`, so that every row's
    slice values[offsets[r]:offsets[r+1]] lies inside the values buffer."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.shape[0] == 0:
        return f"column {name!r}: offsets have shape {offsets.shape}"
    if offsets[0] < 0:
        return f"column {name!r}: offsets start at {int(offsets[0])}"
    falls = np.flatnonzero(offsets[1:] < offsets[:-1])
    if falls.size:
        r = int(falls[0])
        return f"row {r}: column {name!r} offsets fall from {int(offsets[r])} to {int(offsets[r + 1])}"
    if offsets[-1] > n_values:
        r = int(np.argmax(offsets > n_values)) - 1
        return f"row {r}: column {name!r} offsets run to {int(offsets[r + 1])}, past its {n_values} values"
    return None


# ------------------------------------------------------------------------------------- the fast pass
# Run on every batch; says only whether any row breaks an invariant. Value ranges are min/max reductions over
# whole columns and the ascending order of targets one pass over each flat list, which vectorise; the common
# row of a single example then needs only its first and last target checked. `_scan` below, run only when
# this pass fails, finds and describes the first bad row. Both are tested against a naive twin.
@njit(cache=True, nogil=True)
def _outside(values, vocab):
    if values.shape[0] == 0:
        return False
    lo = hi = values[0]
    for i in range(values.shape[0]):
        lo = min(lo, values[i])
        hi = max(hi, values[i])
    return lo < 0 or hi >= vocab


@njit(cache=True, nogil=True)
def _not_ascending_within_rows(off, pos, rows):
    """True if some row's targets fail to strictly ascend: every descent of the flat list must be at a row start."""
    descents = 0
    for i in range(off[0] + 1, off[rows]):
        descents += np.int32(pos[i]) <= np.int32(pos[i - 1])
    for r in range(1, rows):
        if off[0] < off[r] < off[r + 1]:
            descents -= np.int32(pos[off[r]]) <= np.int32(pos[off[r] - 1])
    return descents != 0


@njit(cache=True, nogil=True)
def _any_bad(ids, vocab, ex_off, ex_len, mlm_off, mlm_pos, mlm_lab, sbo_off, sbo_pos, sbo_left, sbo_right, sbo_k,
             sbo_lab):  # fmt: skip
    rows, slots = ids.shape
    if _outside(ids.ravel(), vocab) or _outside(mlm_lab, vocab) or _outside(sbo_lab, vocab):
        return True
    if sbo_k.shape[0] and sbo_k.max() >= SBO_OFFSETS:
        return True
    if _not_ascending_within_rows(mlm_off, mlm_pos, rows) or _not_ascending_within_rows(sbo_off, sbo_pos, rows):
        return True
    for r in range(rows):
        e0, e1 = ex_off[r], ex_off[r + 1]
        used = np.int32(0)
        short = False
        for j in range(e0, e1):
            short |= ex_len[j] < 2
            used += np.int32(ex_len[j])
        if short or used > slots:
            return True
        lo, hi, slo, shi = mlm_off[r], mlm_off[r + 1], sbo_off[r], sbo_off[r + 1]
        if e1 - e0 == 1:  # one example, slots 0..used-1: ascending targets need only their ends checked
            if hi > lo and (mlm_pos[lo] < 1 or np.int32(mlm_pos[hi - 1]) >= used - 1):
                return True
            if shi > slo and (sbo_pos[slo] < 1 or np.int32(sbo_pos[shi - 1]) >= used - 1):
                return True
            bad = False
            for i in range(slo, shi):
                p, left, right = np.int32(sbo_pos[i]), np.int32(sbo_left[i]), np.int32(sbo_right[i])
                bad |= (left < 1) | (left >= p) | (right <= p) | (right >= used - 1)
            if bad:
                return True
            continue
        # Several (or no) examples: walk them along the (ascending) targets.
        if _walk_bad(lo, hi, mlm_pos, ex_len, e0, e1, sbo_left, sbo_right, False):
            return True
        if _walk_bad(slo, shi, sbo_pos, ex_len, e0, e1, sbo_left, sbo_right, True):
            return True
    return False


@njit(cache=True, nogil=True)
def _walk_bad(lo, hi, pos, ex_len, e0, e1, left, right, boundaries):
    """True if a target pos[lo:hi] is not on a content slot of the examples ex_len[e0:e1] (laid out from slot 0),
    or, with `boundaries`, if its left/right boundary is not a content slot of its example on its own side."""
    j, start = e0, np.int32(0)
    end = np.int32(ex_len[e0]) if e1 > e0 else np.int32(0)
    for i in range(lo, hi):
        p = np.int32(pos[i])
        while p >= end and j < e1 - 1:
            j += 1
            start = end
            end += np.int32(ex_len[j])
        if p <= start or p >= end - 1:
            return True
        if boundaries and not (start < np.int32(left[i]) < p < np.int32(right[i]) < end - 1):
            return True
    return False


# ------------------------------------------------------------------------------------ the exact pass
@njit(cache=True, nogil=True)
def _put(found, row, code, item, a, b, c):
    found[0], found[1], found[2], found[3], found[4], found[5] = row, code, item, a, b, c
    return True


@njit(cache=True, nogil=True)
def _scan(ids, vocab, ex_off, ex_len, mlm_off, mlm_pos, mlm_lab, sbo_off, sbo_pos, sbo_left, sbo_right, sbo_k,
          sbo_lab, found):  # fmt: skip
    """First row breaking an invariant: writes (row, code, item, a, b, c) into `found`, returns True; else False.

    Targets are walked together with the row's examples (both ascend, FORMAT.md), so a row costs
    O(slots + examples + targets) and no slot table is built."""
    rows, slots = ids.shape
    for r in range(rows):
        bad = False
        for t in range(slots):  # branch-free: LLVM vectorises this reduction
            v = ids[r, t]
            bad |= (v < 0) | (v >= vocab)
        if bad:
            for t in range(slots):
                if ids[r, t] < 0 or ids[r, t] >= vocab:
                    return _put(found, r, ID_RANGE, t, ids[r, t], 0, 0)
        e0, e1 = ex_off[r], ex_off[r + 1]
        used = 0
        for j in range(e0, e1):
            if ex_len[j] < 2:
                return _put(found, r, EXAMPLE_SHORT, j - e0, ex_len[j], 0, 0)
            used += ex_len[j]
        if used > slots:
            return _put(found, r, ROW_OVERFULL, 0, used, slots, 0)
        # MLM targets: strictly ascending, each on a content slot ([CLS]/[SEP]/padding excluded), label in the vocab.
        j, start, prev = e0, 0, -1
        for i in range(mlm_off[r], mlm_off[r + 1]):
            p = np.int64(mlm_pos[i])
            if p <= prev:
                return _put(found, r, MLM_ORDER, i - mlm_off[r], p, prev, 0)
            prev = p
            while j < e1 and p >= start + ex_len[j]:
                start += ex_len[j]
                j += 1
            if j == e1 or p == start or p == start + ex_len[j] - 1:
                return _put(found, r, MLM_SLOT, i - mlm_off[r], p, 0, 0)
            if mlm_lab[i] < 0 or mlm_lab[i] >= vocab:
                return _put(found, r, MLM_LABEL, i - mlm_off[r], mlm_lab[i], 0, 0)
        # SBO targets: the same, plus both boundaries inside the target's example and the span offset k <= 14.
        j, start, prev = e0, 0, -1
        for i in range(sbo_off[r], sbo_off[r + 1]):
            p = np.int64(sbo_pos[i])
            if p <= prev:
                return _put(found, r, SBO_ORDER, i - sbo_off[r], p, prev, 0)
            prev = p
            while j < e1 and p >= start + ex_len[j]:
                start += ex_len[j]
                j += 1
            if j == e1 or p == start or p == start + ex_len[j] - 1:
                return _put(found, r, SBO_SLOT, i - sbo_off[r], p, 0, 0)
            left, right = np.int64(sbo_left[i]), np.int64(sbo_right[i])
            if not (start < left < p < right < start + ex_len[j] - 1):
                return _put(found, r, SBO_BOUNDARY, i - sbo_off[r], p, left, right)
            if sbo_k[i] >= SBO_OFFSETS:
                return _put(found, r, SBO_OFFSET, i - sbo_off[r], sbo_k[i], 0, 0)
            if sbo_lab[i] < 0 or sbo_lab[i] >= vocab:
                return _put(found, r, SBO_LABEL, i - sbo_off[r], sbo_lab[i], 0, 0)
    return False


def _describe(code: int, item: int, a: int, b: int, c: int, vocab: int) -> str:
    out_of_vocab = f"outside the vocabulary of {vocab} ids"
    return {
        ID_RANGE: f"input_ids slot {item} holds id {a}, {out_of_vocab}",
        EXAMPLE_SHORT: f"example {item} has length {a} (at least [CLS] and [SEP])",
        ROW_OVERFULL: f"its example lengths sum to {a}, more than its {b} slots",
        MLM_ORDER: f"MLM target {item} at slot {a} does not come after the previous one (slot {b})",
        MLM_SLOT: f"MLM target {item} at slot {a} is not on a content token of an example",
        MLM_LABEL: f"mlm_labels[{item}] holds id {a}, {out_of_vocab}",
        SBO_ORDER: f"SBO target {item} at slot {a} does not come after the previous one (slot {b})",
        SBO_SLOT: f"SBO target {item} at slot {a} is not on a content token of an example",
        SBO_BOUNDARY: f"SBO target {item} at slot {a} has boundaries at slots {b} and {c}, not inside its example",
        SBO_OFFSET: f"SBO target {item} has span offset {a} (at most {SBO_OFFSETS - 1}, SPEC §3)",
        SBO_LABEL: f"sbo_labels[{item}] holds id {a}, {out_of_vocab}",
    }[code]


def kernel_args(columns: dict, vocab_size: int) -> tuple:
    """The kernels' arguments: input_ids, vocab, then offsets and values of the columns they read."""
    c = columns
    return (c["input_ids"], np.int64(vocab_size), *c["example_lengths"], *c["mlm_positions"], c["mlm_labels"][1],
            *c["sbo_positions"], c["sbo_left"][1], c["sbo_right"][1], c["sbo_offsets"][1], c["sbo_labels"][1])


def scan_rows(columns: dict, vocab_size: int) -> tuple[int, int, int, int, int, int] | None:
    """The kernel's raw finding for a batch of rows: (row, code, item, a, b, c) of the first problem, or None."""
    args = kernel_args(columns, vocab_size)
    if not _any_bad(*args):
        return None
    found = np.zeros(6, dtype=np.int64)
    return tuple(int(x) for x in found) if _scan(*args, found) else None


def first_bad_row(columns: dict, vocab_size: int) -> tuple[int, str] | None:
    """(row, what is wrong) for the first row of `columns` breaking a FORMAT.md invariant, or None.

    `columns` is a batch of training rows as `record_batch_columns` or `RowSource.gather` returns it:
    input_ids (rows, slots) and each list column as (offsets, values). Offsets must already be sound
    (`offsets_problem`); this checks the values: ids and labels inside the vocabulary, example lengths
    (>= 2 each, summing to at most the row's slots), MLM and SBO targets ascending and on content tokens
    of an example, SBO boundaries inside the target's example, span offsets <= 14.
    """
    found = scan_rows(columns, vocab_size)
    if found is None:
        return None
    row, code, item, a, b, c = found
    return row, _describe(code, item, a, b, c, vocab_size)
