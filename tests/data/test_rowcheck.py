"""The structural row checks (spanbert_data.rowcheck) against a slow, obvious twin, on valid and damaged rows."""

from __future__ import annotations

import numpy as np
import pytest

from spanbert_data import rowcheck as rc
from spanbert_data.config import SBO_OFFSETS
from spanbert_data.rowcheck import first_bad_row, offsets_problem, scan_rows
from tests.train.dataset_fixture import _rows

LISTS = ("example_lengths", "mlm_positions", "mlm_labels", "sbo_positions", "sbo_left", "sbo_right", "sbo_offsets",
         "sbo_labels")  # fmt: skip


def naive_scan(cols: dict, vocab: int):
    """Row by row, with Python lists and an explicit slot -> example table (the kernel walks instead)."""
    ids = cols["input_ids"]
    rows, slots = ids.shape

    def items(name: str, r: int) -> list[int]:
        off, val = cols[name]
        return [int(v) for v in val[off[r] : off[r + 1]]]

    for r in range(rows):
        for t in range(slots):
            if not 0 <= int(ids[r, t]) < vocab:
                return (r, rc.ID_RANGE, t, int(ids[r, t]), 0, 0)
        lengths = items("example_lengths", r)
        for j, n in enumerate(lengths):
            if n < 2:
                return (r, rc.EXAMPLE_SHORT, j, n, 0, 0)
        if sum(lengths) > slots:
            return (r, rc.ROW_OVERFULL, 0, sum(lengths), slots, 0)
        example = {}  # slot -> (first slot, last slot) of its example
        start = 0
        for n in lengths:
            for t in range(start, start + n):
                example[t] = (start, start + n - 1)
            start += n

        def content(p: int, example: dict = example) -> bool:
            return p in example and example[p][0] < p < example[p][1]

        positions, labels = items("mlm_positions", r), items("mlm_labels", r)
        for i, p in enumerate(positions):
            if i and p <= positions[i - 1]:
                return (r, rc.MLM_ORDER, i, p, positions[i - 1], 0)
            if not content(p):
                return (r, rc.MLM_SLOT, i, p, 0, 0)
            if not 0 <= labels[i] < vocab:
                return (r, rc.MLM_LABEL, i, labels[i], 0, 0)
        sbo = [items(name, r) for name in ("sbo_positions", "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels")]
        for i, (p, left, right, k, label) in enumerate(zip(*sbo, strict=True)):
            if i and p <= sbo[0][i - 1]:
                return (r, rc.SBO_ORDER, i, p, sbo[0][i - 1], 0)
            if not content(p):
                return (r, rc.SBO_SLOT, i, p, 0, 0)
            if not (content(left) and content(right) and example[left] == example[p] == example[right]
                    and left < p < right):  # fmt: skip
                return (r, rc.SBO_BOUNDARY, i, p, left, right)
            if k >= SBO_OFFSETS:
                return (r, rc.SBO_OFFSET, i, k, 0, 0)
            if not 0 <= label < vocab:
                return (r, rc.SBO_LABEL, i, label, 0, 0)
    return None


def valid_columns(seed: int, rows: int = 6, row_len: int = 64, vocab: int = 300, id_dtype=np.uint16) -> dict:
    cols, _ = _rows(np.random.default_rng(seed), rows, row_len, vocab, 0)
    out = {"input_ids": cols["input_ids"].astype(id_dtype)}
    for name in LISTS:
        off, val = cols[name]
        if name in ("mlm_labels", "sbo_labels"):
            val = val.astype(id_dtype)
        out[name] = (off.astype(np.int64), val.copy())
    return out


def first_example_only(cols: dict) -> dict:
    """The same rows cut to their first example (targets past it dropped): the common layout of Wikipedia rows."""
    out = {"input_ids": cols["input_ids"].copy()}
    ex_off, ex_len = cols["example_lengths"]
    keep = {name: [] for name in LISTS}
    for r in range(len(out["input_ids"])):
        n = int(ex_len[ex_off[r]])
        out["input_ids"][r, n:] = 0
        keep["example_lengths"].append([n])
        pos_off, pos = cols["mlm_positions"]
        mine = [i for i in range(pos_off[r], pos_off[r + 1]) if pos[i] < n]
        keep["mlm_positions"].append(pos[mine])
        keep["mlm_labels"].append(cols["mlm_labels"][1][mine])
        sbo_off, sbo = cols["sbo_positions"]
        mine = [i for i in range(sbo_off[r], sbo_off[r + 1]) if sbo[i] < n]
        for name in ("sbo_positions", "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels"):
            keep[name].append(cols[name][1][mine])
    for name, lists in keep.items():
        off = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        out[name] = (off, np.concatenate([np.asarray(x, dtype=cols[name][1].dtype) for x in lists]))
    return out


def test_valid_rows_pass(tmp_path):
    for seed in range(5):
        cols = valid_columns(seed)
        for rows in (cols, first_example_only(cols)):
            assert scan_rows(rows, 300) is None and naive_scan(rows, 300) is None
            assert not rc._any_bad(*rc.kernel_args(rows, 300))


@pytest.mark.parametrize("layout", ["packed", "one-example"])
@pytest.mark.parametrize("id_dtype", [np.uint16, np.int32])
def test_kernel_matches_the_naive_twin_on_damaged_rows(id_dtype, layout):
    """Each trial damages one value of one column (often into range, often not) and compares the first finding,
    on rows packed with several examples and on rows of one example (the fast pass treats those apart)."""
    rng = np.random.default_rng(7)
    found_kinds = set()
    for trial in range(400):
        cols = valid_columns(trial % 7, id_dtype=id_dtype)
        if layout == "one-example":
            cols = first_example_only(cols)
        name = ["input_ids", *LISTS][trial % 9]
        values = cols[name] if name == "input_ids" else cols[name][1]
        flat = values.reshape(-1)
        if flat.size == 0:
            continue
        i = int(rng.integers(flat.size))
        info = np.iinfo(flat.dtype)
        old = int(flat[i])
        new = [old + 1, old - 1, int(rng.integers(0, 70)), int(rng.integers(info.min, info.max))][rng.integers(4)]
        flat[i] = np.clip(new, info.min, info.max)
        want = naive_scan(cols, 300)
        assert rc._any_bad(*rc.kernel_args(cols, 300)) == (want is not None), (trial, name, i)  # the fast pass
        assert scan_rows(cols, 300) == want, (trial, name, i)
        if want:
            found_kinds.add(want[1])
    assert found_kinds == set(range(rc.ID_RANGE, rc.SBO_LABEL + 1)), found_kinds  # every kind of problem occurs


def test_messages_name_row_and_problem():
    cols = valid_columns(1)
    cols["mlm_labels"][1][cols["mlm_labels"][0][2]] = 65000  # the first MLM label of row 2
    row, what = first_bad_row(cols, 300)
    assert row == 2 and what == "mlm_labels[0] holds id 65000, outside the vocabulary of 300 ids"


def test_offsets_problems_name_the_row():
    assert offsets_problem("x", np.array([0, 2, 5, 5], np.int32), 5) is None
    assert offsets_problem("x", np.array([0, 2, 1, 5], np.int32), 5) == "row 1: column 'x' offsets fall from 2 to 1"
    past = "row 1: column 'x' offsets run to 9, past its 5 values"
    assert offsets_problem("x", np.array([0, 2, 9, 9], np.int32), 5) == past
    assert "start at -1" in offsets_problem("x", np.array([-1, 2], np.int32), 5)
