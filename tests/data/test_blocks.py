"""make_blocks (SPEC §1) against a slow, obvious twin, plus the invariants every blocking must keep."""

import numpy as np
import pytest

from spanbert_data.blocks import make_blocks


def naive_blocks(line_lengths, line_docs, word_start, max_content=510):
    """The SPEC §1 rules written plainly: per document, cut long lines into pieces, then pack greedily."""
    line_starts = np.concatenate([[0], np.cumsum(line_lengths)]).astype(int)
    docs = {}  # doc -> list of (start, end) pieces, in order
    for i, (length, doc) in enumerate(zip(line_lengths, line_docs, strict=True)):
        pieces = docs.setdefault(int(doc), [])
        start, end = int(line_starts[i]), int(line_starts[i] + length)
        while end - start > max_content:
            starts_in_reach = [q for q in range(start + 1, start + max_content + 1) if word_start[q]]
            cut = starts_in_reach[-1] if starts_in_reach else start + max_content
            pieces.append((start, cut))
            start = cut
        if end > start:
            pieces.append((start, end))
    blocks = []  # (start, end, doc)
    for doc in sorted(docs):
        current = None
        for start, end in docs[doc]:
            if current is not None and end - current[0] <= max_content:
                current[1] = end
            else:
                if current is not None:
                    blocks.append((current[0], current[1], doc))
                current = [start, end]
        if current is not None:
            blocks.append((current[0], current[1], doc))
    offsets = np.array([0] + [b[1] for b in blocks], dtype=np.int64)
    return offsets, np.array([b[2] for b in blocks], dtype=np.int64)


def check_invariants(offsets, block_docs, line_lengths, line_docs, max_content):
    n_tokens = int(np.sum(line_lengths))
    assert offsets[0] == 0 and offsets[-1] == n_tokens  # every token in exactly one block, in order
    sizes = np.diff(offsets)
    assert np.all(sizes >= 1) and np.all(sizes <= max_content)
    token_doc = np.repeat(np.asarray(line_docs, dtype=np.int64), line_lengths)
    for b in range(len(block_docs)):  # never crossing documents
        assert np.all(token_doc[offsets[b] : offsets[b + 1]] == block_docs[b])
    # whole lines: a block boundary inside a line only where that line is longer than max_content
    line_ends = np.cumsum(line_lengths)
    line_of_token = np.repeat(np.arange(len(line_lengths)), line_lengths)
    for cut in offsets[1:-1]:
        if cut not in line_ends:
            assert line_lengths[line_of_token[cut]] > max_content


def random_case(rng, n_docs, max_content):
    """Documents of 0..7 lines: 15% empty lines, 15% over-long-ish lines (near or past max_content), the rest short."""
    line_docs = np.repeat(np.arange(n_docs) * 3, rng.integers(0, 8, size=n_docs))  # gaps in doc numbers are fine
    kind = rng.random(line_docs.size)
    line_lengths = rng.integers(1, max_content + 1, size=line_docs.size)
    long = (kind >= 0.15) & (kind < 0.3)
    line_lengths[long] = rng.integers(max(1, max_content - 2), 3 * max_content + 1, size=long.sum())
    line_lengths[kind < 0.15] = 0
    word_start = rng.random(int(line_lengths.sum())) < rng.choice([0.02, 0.3, 0.9])
    return line_lengths.astype(np.int64), line_docs.astype(np.int64), word_start


@pytest.mark.parametrize("max_content", [510, 7, 1])
def test_matches_naive_on_random_inputs(max_content):
    rng = np.random.default_rng(max_content)
    for trial in range(150):
        lengths, docs, ws = random_case(rng, int(rng.integers(1, 12)), max_content)
        got = make_blocks(lengths, docs, ws, max_content)
        want = naive_blocks(lengths, docs, ws, max_content)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"trial {trial}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"trial {trial}")
        check_invariants(*got, lengths, docs, max_content)


def run(lengths, docs, ws=None, max_content=510):
    lengths = np.asarray(lengths, np.int64)
    ws = np.ones(int(lengths.sum()), bool) if ws is None else np.asarray(ws, bool)
    got = make_blocks(lengths, np.asarray(docs, np.int64), ws, max_content)
    want = naive_blocks(lengths, docs, ws, max_content)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    check_invariants(*got, lengths, docs, max_content)
    return got


def test_greedy_packing_by_hand():
    offsets, docs = run([200, 200, 200, 100, 10], [0, 0, 0, 0, 1])
    assert offsets.tolist() == [0, 400, 700, 710]  # 200+200 | 200+100 | next document
    assert docs.tolist() == [0, 0, 1]


def test_exact_fit_510_and_511():
    assert run([510], [0])[0].tolist() == [0, 510]
    assert run([255, 255], [0, 0])[0].tolist() == [0, 510]
    assert run([255, 256], [0, 0])[0].tolist() == [0, 255, 511]
    # 511 tokens, all word starts: a 510-token piece and a 1-token piece; the short one starts a new block
    assert run([511], [0])[0].tolist() == [0, 510, 511]
    # the piece after a cut can join the following line
    assert run([511, 5], [0, 0])[0].tolist() == [0, 510, 516]


def test_long_line_cut_at_last_word_start():
    ws = np.zeros(700, bool)
    ws[[0, 100, 400, 600]] = True
    offsets, _ = run([700], [0], ws)
    assert offsets.tolist() == [0, 400, 700]


def test_single_giant_word_cut_inside():
    ws = np.zeros(1200, bool)
    ws[0] = True
    offsets, _ = run([1200], [0], ws)
    assert offsets.tolist() == [0, 510, 1020, 1200]
    # a word start exactly at the reach limit keeps a full piece
    ws = np.zeros(1020, bool)
    ws[[0, 510]] = True
    assert run([1020], [0], ws)[0].tolist() == [0, 510, 1020]


def test_empty_docs_and_zero_length_lines():
    offsets, docs = run([0, 3, 0, 0, 0, 4, 0], [0, 1, 1, 2, 3, 3, 5])
    assert offsets.tolist() == [0, 3, 7] and docs.tolist() == [1, 3]
    offsets, docs = run([0, 0], [0, 1])
    assert offsets.tolist() == [0] and docs.size == 0
    offsets, docs = run([], [])
    assert offsets.tolist() == [0] and docs.size == 0


def test_last_block_of_document_kept_however_short():
    offsets, docs = run([509, 1, 1], [0, 0, 0])
    assert offsets.tolist() == [0, 510, 511]
    offsets, docs = run([1] * 5, [0, 1, 2, 3, 4])
    assert offsets.tolist() == [0, 1, 2, 3, 4, 5] and docs.tolist() == [0, 1, 2, 3, 4]


def test_many_documents():
    rng = np.random.default_rng(7)
    docs = np.sort(rng.integers(0, 3000, size=20000))
    lengths = rng.integers(0, 60, size=docs.size)
    ws = rng.random(int(lengths.sum())) < 0.8
    offsets, block_docs = make_blocks(lengths, docs, ws)
    want = naive_blocks(lengths, docs, ws)
    np.testing.assert_array_equal(offsets, want[0])
    np.testing.assert_array_equal(block_docs, want[1])
    assert set(block_docs.tolist()) == set(docs[lengths > 0].tolist())


@pytest.mark.parametrize(
    "args, match",
    [
        (([1, 2], [0], np.ones(3, bool)), "line_docs"),
        (([1, -1], [0, 0], np.ones(0, bool)), "line_lengths"),
        (([1, 2], [1, 0], np.ones(3, bool)), "non-decreasing"),
        (([1, 2], [0, 0], np.ones(4, bool)), "token_word_start"),
        (([1, 2], [0, 0], np.ones(3, np.int8)), "token_word_start"),
        (([1.5, 2], [0, 0], np.ones(3, bool)), "line_lengths"),
        (([[1, 2]], [[0, 0]], np.ones(3, bool)), "line_lengths"),
    ],
)
def test_bad_inputs_raise_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        make_blocks(*args)


def test_bad_max_content():
    with pytest.raises(ValueError, match="max_content"):
        make_blocks(np.array([1]), np.array([0]), np.ones(1, bool), max_content=0)
