"""Packing examples into rows and the training-row columns (spanbert_data/packing.py, docs/FORMAT.md pass 2)."""

import numpy as np
import pyarrow as pa
import pytest

from spanbert_data.packing import (
    TRAINING_ROW_SCHEMA,
    assemble_rows,
    pack_examples,
    padding_fraction,
    record_batch_columns,
    rows_lower_bound,
    rows_to_record_batch,
)

CLS, SEP, PAD, MASK = 101, 102, 0, 103


# ------------------------------------------------------------------------------------ slow obvious twins
def naive_best_fit_decreasing(lengths, row_len):
    """Longest first (ties by index); each into the fullest row that fits, ties to the row filled last."""
    free, touched, row_of, slot_of = [], [], [0] * len(lengths), [0] * len(lengths)
    for step, i in enumerate(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))):
        fits = [r for r in range(len(free)) if free[r] >= lengths[i]]
        if fits:
            r = min(fits, key=lambda r: (free[r], -touched[r]))
        else:
            r = len(free)
            free.append(row_len)
            touched.append(-1)
        row_of[i], slot_of[i] = r, row_len - free[r]
        free[r] -= lengths[i]
        touched[r] = step
    return row_of, slot_of, len(free)


def naive_assemble(blocks, row_of, slot_of, n_rows, row_len):
    """Row by row, example by example: the columns of docs/FORMAT.md as Python lists."""
    rows = []
    for r in range(n_rows):
        ex = sorted((i for i in range(len(blocks)) if row_of[i] == r), key=lambda i: slot_of[i])
        ids = [PAD] * row_len
        row = {k: [] for k in ("example_lengths", "block_ids", "mlm_positions", "mlm_labels", "sbo_positions",
                               "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels")}
        for i in ex:
            b, s = blocks[i], slot_of[i]
            ids[s:s + len(b["ids"]) + 2] = [CLS, *b["ids"], SEP]
            row["example_lengths"].append(len(b["ids"]) + 2)
            row["block_ids"].append(b["block_id"])
            row["mlm_positions"] += [s + 1 + p for p in b["mlm"]]
            row["mlm_labels"] += [b["orig"][p] for p in b["mlm"]]
            for p, left, right, k in b["sbo"]:
                row["sbo_positions"].append(s + 1 + p)
                row["sbo_left"].append(s + 1 + left)
                row["sbo_right"].append(s + 1 + right)
                row["sbo_offsets"].append(k)
                row["sbo_labels"].append(b["orig"][p])
        row["input_ids"] = ids
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ test data
def random_blocks(rng, n_blocks, max_content, vocab=30000):
    """Blocks with SPEC §2/§3-shaped targets: disjoint non-touching spans, SBO only for inner spans, k < 15."""
    blocks = []
    for b in range(n_blocks):
        n = int(rng.integers(1, max_content + 1))
        orig = rng.integers(1000, vocab, n).tolist()
        ids, mlm, sbo, p = list(orig), [], [], int(rng.integers(0, 3))
        while p < n:
            e = min(n - 1, p + int(rng.integers(0, 18)))  # span [p, e], up to 18 tokens so k is cut at 15
            for i in range(p, e + 1):
                mlm.append(i)
                ids[i] = MASK
                if p > 0 and e < n - 1 and i - p < 15:
                    sbo.append((i, p - 1, e + 1, i - p))
            p = e + 2 + int(rng.integers(0, 8))  # at least one unmasked token between spans
        blocks.append({"ids": ids, "orig": orig, "mlm": mlm, "sbo": sbo, "block_id": 1000 + 7 * b})
    return blocks


def flatten(blocks, id_dtype=np.uint16):
    """The per-block flat arrays of the masking stage (content-relative positions)."""
    def offsets(counts):
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    sbo = [t for b in blocks for t in b["sbo"]]
    col = np.array(sbo, dtype=np.int64).reshape(-1, 4)
    return dict(
        block_offsets=offsets([len(b["ids"]) for b in blocks]),
        block_ids=np.array([b["block_id"] for b in blocks], np.int64),
        masked_input_ids=np.array([t for b in blocks for t in b["ids"]], id_dtype),
        mlm_offsets=offsets([len(b["mlm"]) for b in blocks]),
        mlm_positions=np.array([p for b in blocks for p in b["mlm"]], np.int32),
        mlm_labels=np.array([b["orig"][p] for b in blocks for p in b["mlm"]], id_dtype),
        sbo_offsets=offsets([len(b["sbo"]) for b in blocks]),
        sbo_positions=col[:, 0].astype(np.int32), sbo_left=col[:, 1].astype(np.int32),
        sbo_right=col[:, 2].astype(np.int32), sbo_k=col[:, 3].astype(np.uint8),
        sbo_labels=np.array([b["orig"][t[0]] for b in blocks for t in b["sbo"]], id_dtype),
    )


def build(blocks, row_len, id_dtype=np.uint16):
    arrays = flatten(blocks, id_dtype)
    lengths = np.diff(arrays["block_offsets"]) + 2
    row_of, slot_of, n_rows = pack_examples(lengths, row_len)
    cols = assemble_rows(**arrays, row_of=row_of, slot_of=slot_of, n_rows=n_rows, row_len=row_len, cls_id=CLS,
                         sep_id=SEP, pad_id=PAD, id_dtype=id_dtype)
    return arrays, (row_of, slot_of, n_rows), cols


def mixed_lengths(rng, n, row_len=512):
    """The brief's stress mix: 70% near-full examples U(400, 512), 30% U(3, 512)."""
    return np.where(rng.random(n) < 0.7, rng.integers(400, row_len + 1, n), rng.integers(3, row_len + 1, n))


def wiki_like_lengths(rng, n_docs, cap=510):
    """Greedy blocks (SPEC §1) of documents with lognormal token counts made of sentence lines (~28 tokens)."""
    out = []
    for total in rng.lognormal(np.log(250), 1.2, n_docs):
        sentences = np.maximum(1, rng.lognormal(np.log(25), 0.5, int(total // 10) + 2).astype(np.int64))
        sentences = sentences[: int(np.searchsorted(np.cumsum(sentences), total)) + 1]
        cur = 0
        for s in np.minimum(sentences, cap).tolist():
            if cur + s > cap:
                out.append(cur)
                cur = 0
            cur += s
        out.append(cur)
    return np.array(out, np.int64) + 2




# ------------------------------------------------------------------------------------ packing
def check_placement(lengths, row_of, slot_of, n_rows, row_len):
    assert row_of.shape == slot_of.shape == lengths.shape
    used = np.zeros((n_rows, row_len), np.int64)
    for i, (r, s, n) in enumerate(zip(row_of, slot_of, lengths, strict=True)):
        assert 0 <= r < n_rows and s >= 0 and s + n <= row_len
        assert not used[r, s:s + n].any(), f"example {i} overlaps another"
        used[r, s:s + n] = 1
    assert used.sum() == lengths.sum()  # every example placed exactly once, whole
    assert np.all(np.bincount(row_of, minlength=n_rows) > 0)  # no empty row


@pytest.mark.parametrize("row_len", [8, 64, 512])
def test_pack_matches_naive_twin(row_len):
    rng = np.random.default_rng(row_len)
    for n in (0, 1, 2, 37, 300):
        lengths = rng.integers(3, row_len + 1, n)
        row_of, slot_of, n_rows = pack_examples(lengths, row_len)
        check_placement(lengths, row_of, slot_of, n_rows, row_len)
        assert (row_of.tolist(), slot_of.tolist(), n_rows) == naive_best_fit_decreasing(lengths.tolist(), row_len)


def test_pack_layout_and_determinism():
    rng = np.random.default_rng(7)
    lengths = mixed_lengths(rng, 5000)
    row_of, slot_of, n_rows = pack_examples(lengths, 512)
    check_placement(lengths, row_of, slot_of, n_rows, 512)
    again = pack_examples(lengths.astype(np.int32), 512)
    assert np.array_equal(row_of, again[0]) and np.array_equal(slot_of, again[1]) and n_rows == again[2]
    order = np.lexsort((slot_of, row_of))  # inside a row: decreasing length, then index
    same_row = row_of[order][1:] == row_of[order][:-1]
    key = lengths[order].astype(np.int64) * 10**6 - order
    assert np.all(key[1:][same_row] < key[:-1][same_row])


def test_pack_edge_cases_and_errors():
    assert pack_examples(np.full(5, 512), 512)[2] == 5
    row_of, slot_of, n_rows = pack_examples(np.array([256, 256, 100, 412]), 512)
    assert n_rows == 2 and row_of.tolist() == [1, 1, 0, 0] and slot_of.tolist() == [0, 256, 412, 0]
    with pytest.raises(ValueError, match="example 1 has length 513"):
        pack_examples(np.array([3, 513]), 512)
    with pytest.raises(ValueError, match="length 0"):
        pack_examples(np.array([0]), 512)
    with pytest.raises(ValueError, match="integer"):
        pack_examples(np.array([3.0]), 512)


def test_padding_mixed_distribution_is_near_optimal():
    """70% U(400,512) + 30% U(3,512): no two long examples share a row, so ~9% padding is unavoidable;
    best-fit decreasing must stay within 0.3 points of the L2 lower bound of any packing."""
    rng = np.random.default_rng(0)
    for n in (2000, 100_000):
        lengths = mixed_lengths(rng, n)
        n_rows = pack_examples(lengths, 512)[2]
        bound = padding_fraction(lengths, rows_lower_bound(lengths, 512), 512)
        assert padding_fraction(lengths, n_rows, 512) <= bound + 0.003


def test_padding_wiki_like_below_two_percent():
    """Greedy sentence blocks of Wikipedia-like documents (~2,000 blocks): < 2% padding (DESIGN §6)."""
    lengths = wiki_like_lengths(np.random.default_rng(1), 1200)
    assert 1500 < lengths.size < 2500
    n_rows = pack_examples(lengths, 512)[2]
    assert padding_fraction(lengths, n_rows, 512) < 0.02


# ------------------------------------------------------------------------------------ assembly
@pytest.mark.parametrize("id_dtype", [np.uint16, np.int32])
def test_assemble_matches_naive_twin(id_dtype):
    rng = np.random.default_rng(3)
    vocab = 60000 if id_dtype == np.uint16 else 100_000
    blocks = random_blocks(rng, 80, 40, vocab)
    _, (row_of, slot_of, n_rows), cols = build(blocks, 64, id_dtype)
    expected = naive_assemble(blocks, row_of, slot_of, n_rows, 64)
    assert cols["input_ids"].dtype == id_dtype and cols["input_ids"].shape == (n_rows, 64)
    assert cols["input_ids"].tolist() == [row["input_ids"] for row in expected]
    for name, (offsets, values) in ((k, v) for k, v in cols.items() if k != "input_ids"):
        assert offsets.dtype == np.int32 and offsets.shape == (n_rows + 1,)
        assert [values[offsets[r]:offsets[r + 1]].tolist() for r in range(n_rows)] == [
            row[name] for row in expected], name
    assert cols["mlm_labels"][1].dtype == cols["sbo_labels"][1].dtype == id_dtype
    assert cols["sbo_offsets"][1].dtype == np.uint8 and cols["block_ids"][1].dtype == np.int64


def check_invariants(cols, row_len):
    """docs/FORMAT.md invariants on assembled (or read back) columns."""
    ids = cols["input_ids"]
    col = {k: v for k, v in cols.items() if k != "input_ids"}
    for r in range(ids.shape[0]):
        def get(name, r=r):
            off, val = col[name]
            return val[off[r]:off[r + 1]].astype(np.int64)

        lengths = get("example_lengths")
        assert lengths.sum() <= row_len and np.all(ids[r, lengths.sum():] == PAD)
        example = np.full(row_len, -1)  # example index of each content slot, -1 on [CLS]/[SEP]/[PAD]
        start = 0
        for e, n in enumerate(lengths):
            assert ids[r, start] == CLS and ids[r, start + n - 1] == SEP
            example[start + 1:start + n - 1] = e
            start += n
        mlm, sbo = get("mlm_positions"), get("sbo_positions")
        left, right, k = get("sbo_left"), get("sbo_right"), get("sbo_offsets")
        assert np.all(np.diff(mlm) > 0) and np.all(np.diff(sbo) > 0)
        assert np.all(example[mlm] >= 0) and np.all(example[sbo] >= 0)
        assert np.isin(sbo, mlm).all()
        assert np.all(example[left] == example[sbo]) and np.all(example[right] == example[sbo])
        assert not np.isin(left, mlm).any() and not np.isin(right, mlm).any()
        assert np.all((left < sbo) & (sbo < right)) and np.all(k == sbo - left - 1) and np.all(k <= 14)


def test_assemble_invariants():
    rng = np.random.default_rng(11)
    blocks = random_blocks(rng, 300, 126)
    _, _, cols = build(blocks, 128)
    check_invariants(cols, 128)


def test_assemble_rejects_bad_input():
    rng = np.random.default_rng(5)
    arrays = flatten(random_blocks(rng, 10, 20))
    lengths = np.diff(arrays["block_offsets"]) + 2
    row_of, slot_of, n_rows = pack_examples(lengths, 64)
    kw = dict(row_of=row_of, slot_of=slot_of, n_rows=n_rows, row_len=64, cls_id=CLS, sep_id=SEP, pad_id=PAD,
              id_dtype=np.uint16)
    b = int(np.flatnonzero(np.diff(arrays["mlm_offsets"]) >= 2)[0])  # swap two targets of one block
    swapped = arrays["mlm_positions"].copy()
    lo = arrays["mlm_offsets"][b]
    swapped[lo], swapped[lo + 1] = swapped[lo + 1], swapped[lo]
    bad = dict(arrays, mlm_positions=swapped)
    with pytest.raises(ValueError, match="ascending"):
        assemble_rows(**bad, **kw)
    bad = dict(arrays, sbo_right=arrays["sbo_right"] + 1000)
    with pytest.raises(ValueError, match="sbo_right"):
        assemble_rows(**bad, **kw)
    with pytest.raises(ValueError, match="overlap"):
        assemble_rows(**arrays, **dict(kw, row_of=np.zeros_like(row_of), slot_of=np.zeros_like(slot_of)))
    big = dict(arrays, masked_input_ids=arrays["masked_input_ids"].astype(np.int32) + 70000)
    with pytest.raises(ValueError, match="int32"):
        assemble_rows(**big, **kw)


# ------------------------------------------------------------------------------------ Arrow
def test_schema_matches_format_doc():
    schema = TRAINING_ROW_SCHEMA(512, np.uint16)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("input_ids", "fixed_size_list<item: uint16>[512]"), ("example_lengths", "list<item: uint16>"),
        ("block_ids", "list<item: int64>"), ("mlm_positions", "list<item: uint16>"),
        ("mlm_labels", "list<item: uint16>"), ("sbo_positions", "list<item: uint16>"),
        ("sbo_left", "list<item: uint16>"), ("sbo_right", "list<item: uint16>"),
        ("sbo_offsets", "list<item: uint8>"), ("sbo_labels", "list<item: uint16>")]
    wide = TRAINING_ROW_SCHEMA(128, "int32")
    assert wide.field("input_ids").type == pa.list_(pa.int32(), 128) and wide.field("sbo_labels").type.value_type == \
        pa.int32()
    with pytest.raises(ValueError, match="uint16 or int32"):
        TRAINING_ROW_SCHEMA(512, np.int64)


@pytest.mark.parametrize("id_dtype", [np.uint16, np.int32])
def test_arrow_ipc_round_trip_is_zero_copy(tmp_path, id_dtype):
    blocks = random_blocks(np.random.default_rng(2), 200, 126)
    _, (_, _, n_rows), cols = build(blocks, 128, id_dtype)
    batch = rows_to_record_batch(cols, 128)
    assert batch.num_rows == n_rows and batch.schema == TRAINING_ROW_SCHEMA(128, id_dtype)
    assert batch.column("input_ids").values.buffers()[1].address == cols["input_ids"].ctypes.data  # no copy
    assert batch.column("sbo_left").buffers()[1].address == cols["sbo_left"][0].ctypes.data
    assert batch.column("sbo_left").values.buffers()[1].address == cols["sbo_left"][1].ctypes.data
    path = tmp_path / "part-00000.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)

    allocated = pa.total_allocated_bytes()
    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches == 1
        back = record_batch_columns(reader.get_batch(0))
        assert pa.total_allocated_bytes() == allocated  # nothing was copied out of the mapping
        assert back["input_ids"].base is not None and not back["input_ids"].flags.owndata
        assert np.array_equal(back["input_ids"], cols["input_ids"]) and back["input_ids"].dtype == id_dtype
        for name, column in cols.items():
            if name != "input_ids":
                offsets, values = column
                assert np.array_equal(back[name][0], offsets) and np.array_equal(back[name][1], values), name
                assert back[name][1].dtype == values.dtype
        check_invariants(back, 128)
        del back, reader


def test_record_batch_columns_slices_and_errors():
    _, _, cols = build(random_blocks(np.random.default_rng(4), 60, 60), 64)
    batch = rows_to_record_batch(cols, 64)
    part = record_batch_columns(batch.slice(3, 5))
    assert np.array_equal(part["input_ids"], cols["input_ids"][3:8])
    off, val = part["mlm_positions"]
    full_off, full_val = cols["mlm_positions"]
    assert [val[off[r]:off[r + 1]].tolist() for r in range(5)] == [
        full_val[full_off[r]:full_off[r + 1]].tolist() for r in range(3, 8)]

    missing = batch.drop_columns(["sbo_left"])
    with pytest.raises(ValueError, match="'sbo_left'.*missing"):
        record_batch_columns(missing)
    i = batch.schema.get_field_index("mlm_positions")
    wrong = batch.set_column(i, "mlm_positions", batch.column(i).cast(pa.list_(pa.int32())))
    with pytest.raises(ValueError, match="'mlm_positions' has type"):
        record_batch_columns(wrong)
    i = batch.schema.get_field_index("mlm_labels")
    other = pa.ListArray.from_arrays(pa.array(np.zeros(batch.num_rows + 1, np.int32)), pa.array([], pa.uint16()))
    with pytest.raises(ValueError, match="row 0: column 'mlm_labels' has another number of entries"):
        record_batch_columns(batch.set_column(i, "mlm_labels", other))
