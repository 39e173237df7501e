"""Span masking (SPEC §2) and SBO targets (SPEC §3): exact agreement with the pure-Python twin,
laws checked statistically with tolerances derived from the sample size, determinism."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from spanbert_data import rng
from spanbert_data.config import SCHEMES, MaskingConfig
from spanbert_data.masking import (
    MaskedBlocks,
    _draw_token,
    _guide_table,
    block_budgets,
    mask_blocks,
    replacement_cdf,
    span_length_probs,
)
from spanbert_data.words import word_start_table
from tests.naive_masking import Stream, mix64, naive_mask_block

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ALPHA = 1e-4  # significance of every statistical test: fixed seeds, so a pass is deterministic
MASK_ID = 4


def _flat(blocks):
    lengths = np.array([len(b) for b in blocks], np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    return np.concatenate(blocks) if blocks else np.zeros(0, np.uint16), offsets


@pytest.fixture(scope="module")
def fake_vocab():
    """200 ids: 0 PAD, 1 UNK, 2 CLS, 3 SEP, 4 MASK; ~25% of the others are '##' continuations.
    Unigram counts are Zipf-skewed so that a wrong replacement law shows up."""
    gen = np.random.default_rng(1)
    vocab = 200
    strings = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    strings += [("##" if gen.random() < 0.25 else "") + f"w{i}" for i in range(5, vocab)]
    special = np.zeros(vocab, bool)
    special[[0, 1, 2, 3, 4]] = True
    counts = (1e6 / np.arange(1, vocab + 1) ** 1.1).astype(np.int64)
    return word_start_table(strings), special, counts


def _fake_blocks(n_blocks, seed, lengths=None):
    """Random content ([UNK] or ordinary ids, never PAD/CLS/SEP/MASK) of the given or random lengths."""
    gen = np.random.default_rng(seed)
    lengths = gen.integers(1, 511, n_blocks) if lengths is None else lengths
    blocks = []
    for n in lengths:
        ids = gen.integers(5, 200, n).astype(np.uint16)
        ids[gen.random(n) < 0.01] = 1
        blocks.append(ids)
    return blocks


@pytest.fixture(scope="module")
def real_text():
    """The asset's sentences tokenized with the real BERT tokenizer and packed greedily into
    <= 510-token blocks of whole lines (SPEC §1)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ASSETS / "bert-uncased-tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lines = [s for s in (ASSETS / "masking_wiki_excerpt.txt").read_text().splitlines() if s.strip()]
    encoded = [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]
    blocks, cur = [], []
    for ids in encoded:
        if cur and len(cur) + len(ids) > 510:
            blocks.append(np.array(cur, np.uint16))
            cur = []
        cur += ids[:510]
    blocks.append(np.array(cur, np.uint16))
    vocab = tok.get_vocab()
    strings = [None] * len(vocab)
    for s, i in vocab.items():
        strings[i] = s
    special = np.zeros(len(strings), bool)
    special[[tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]] = True
    counts = np.bincount(np.concatenate(blocks), minlength=len(strings))
    return blocks, word_start_table(strings), replacement_cdf(counts, special, "unigram"), tok.token_to_id("[MASK]")


def _block(m: MaskedBlocks, b: int):
    """Block b's results as plain lists, in the naive twin's layout."""
    sl = slice(*m.mlm_offsets[b : b + 2])
    ss = slice(*m.sbo_offsets[b : b + 2])
    sp = slice(*m.span_offsets[b : b + 2])
    sbo = zip(m.sbo_positions[ss], m.sbo_left[ss], m.sbo_right[ss], m.sbo_k[ss], m.sbo_labels[ss], strict=True)
    return {
        "mlm_positions": m.mlm_positions[sl].tolist(),
        "mlm_labels": m.mlm_labels[sl].tolist(),
        "mlm_kind": m.mlm_kind[sl].tolist(),
        "spans": list(zip(m.span_start[sp].tolist(), m.span_end[sp].tolist(), strict=True)),
        "span_kind": m.span_kind[sp].tolist(),
        "sbo": [tuple(int(v) for v in t) for t in sbo],
    }


def _run(blocks, keys, ws, cdf, cfg, seed=7, epoch=0, diagnostics=False, mask_id=MASK_ID):
    """mask_blocks with the word starts of a WordPiece-like table `ws` gathered at the tokens."""
    tokens, offsets = _flat(blocks)
    return mask_blocks(tokens, offsets, np.asarray(keys, np.int64), ws[tokens], cdf, mask_id, cfg, seed, epoch,
                       diagnostics)  # fmt: skip


# ---------------------------------------------------------------------------------------------- exact


def test_span_length_table_is_specs():
    probs = span_length_probs(0.2, 10)
    spec = [0.2241, 0.1792, 0.1434, 0.1147, 0.0918, 0.0734, 0.0587, 0.0470, 0.0376, 0.0301]
    np.testing.assert_allclose(probs, spec, atol=5e-5)
    assert abs((np.arange(1, 11) * probs).sum() - 3.797) < 5e-4


def test_rng_matches_pure_python():
    for seed, epoch, block in [(0, 0, 0), (1, 2, 3), (2**64 - 1, 2**40, 2**62), (12345, 0, 999_999_999)]:
        key = rng.stream_key(np.uint64(seed), np.uint64(epoch), np.uint64(block))
        stream = Stream(seed, epoch, block)
        assert int(key) == stream.state
        state = key
        for _ in range(5):
            state, u = rng.next_uniform(np.uint64(state))  # Numba returns a Python int
            assert u == stream.uniform()
    assert int(rng.mix64(np.uint64(2**63 + 5))) == mix64(2**63 + 5)


def test_guided_inverse_cdf_is_exact(fake_vocab):
    ws, special, counts = fake_vocab
    for cdf in (replacement_cdf(counts, special, "unigram"), replacement_cdf(counts, special, "uniform"),
                replacement_cdf(np.array([0, 1, 0, 0, 10**9, 1, 0]), np.zeros(7, bool), "unigram")):  # fmt: skip
        guide = _guide_table(cdf)
        m = cdf.size
        edges = np.concatenate([cdf, np.arange(m) / m, np.nextafter(np.arange(1, m) / m, 0)])
        u = np.concatenate([np.random.default_rng(2).random(20000), edges[edges < 1], [0.0, np.nextafter(1.0, 0)]])
        got = np.array([_draw_token(cdf, guide, x) for x in u])
        np.testing.assert_array_equal(got, np.searchsorted(cdf, u, side="right"))


def test_budget_is_the_arithmetic_ceiling():
    n = np.arange(0, 2000)
    for ratio in (0.15, 0.1, 0.4, 1.0):
        want = [-(-int(k) * Fraction(str(ratio)).numerator // Fraction(str(ratio)).denominator) for k in n]
        assert block_budgets(n, ratio).tolist() == want


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("replacement", ["unigram", "uniform"])
def test_identical_to_naive_twin(fake_vocab, scheme, replacement):
    ws, special, counts = fake_vocab
    cdf = replacement_cdf(counts, special, replacement)
    # Awkward lengths (empty, tiny; 20 and 100 hit integer budgets), then random ones; SPEC §2 defaults and odd options.
    lengths = [1, 2, 0, 3, 20, 100, 510] + list(np.random.default_rng(3).integers(1, 511, 34))
    blocks = _fake_blocks(len(lengths), seed=4, lengths=lengths)
    keys = np.arange(1000, 1000 + len(blocks)) * 7919
    for cfg in (MaskingConfig(scheme=scheme, replacement=replacement),
                MaskingConfig(scheme=scheme, mask_ratio=0.5, geometric_p=0.5, max_span_words=3, max_sbo_offset=2,
                              mask_token_prob=0.3, random_token_prob=0.5)):  # fmt: skip
        m = _run(blocks, keys, ws, cdf, cfg, seed=11, epoch=3, diagnostics=True)
        drawn = []
        for b, (block, key) in enumerate(zip(blocks, keys, strict=True)):
            want = naive_mask_block(block.tolist(), ws[block].tolist(), cdf.tolist(), MASK_ID, cfg, 11, 3, int(key))
            got = _block(m, b)
            for field in got:
                assert got[field] == want[field], (scheme, b, field)
            np.testing.assert_array_equal(m.input_ids[sum(lengths[:b]) : sum(lengths[: b + 1])], want["input_ids"])
            drawn += want["drawn_words"]
        if scheme == "span":
            assert m.drawn_words.tolist() == drawn
        else:
            assert m.drawn_words is None and drawn == []
        assert m.input_ids.dtype == np.uint16 and m.mlm_labels.dtype == np.uint16


def test_int32_tokens_and_empty_input(fake_vocab):
    ws, special, counts = fake_vocab
    cdf = replacement_cdf(counts, special, "unigram")
    blocks = _fake_blocks(5, seed=5)
    m16 = _run(blocks, range(5), ws, cdf, MaskingConfig())
    m32 = _run([b.astype(np.int32) for b in blocks], range(5), ws, cdf, MaskingConfig())
    assert m32.input_ids.dtype == np.int32 and m32.sbo_labels.dtype == np.int32
    np.testing.assert_array_equal(m16.input_ids, m32.input_ids)
    np.testing.assert_array_equal(m16.sbo_positions, m32.sbo_positions)
    empty = _run([], [], ws, cdf, MaskingConfig())
    assert empty.mlm_offsets.tolist() == [0] and empty.mlm_positions.size == 0
    # Read-only inputs, as zero-copy views of memory-mapped Arrow buffers are.
    tokens, offsets = _flat(blocks)
    ro = [a.copy() for a in (tokens, offsets, ws[tokens], cdf)]
    for a in ro:
        a.flags.writeable = False
    m_ro = mask_blocks(ro[0], ro[1], np.arange(5, dtype=np.int64), ro[2], ro[3], MASK_ID, MaskingConfig(), 7, 0)
    np.testing.assert_array_equal(m_ro.input_ids, m16.input_ids)


# ---------------------------------------------------------------------------------------------- invariants


@pytest.fixture(scope="module")
def many_blocks():
    return _fake_blocks(1500, seed=6)


@pytest.fixture(scope="module")
def masked_by_scheme(fake_vocab, many_blocks):
    ws, special, counts = fake_vocab
    cdf = replacement_cdf(counts, special, "unigram")
    keys = np.arange(len(many_blocks))
    return {s: _run(many_blocks, keys, ws, cdf, MaskingConfig(scheme=s), diagnostics=True) for s in SCHEMES}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_budget_targets_and_spans(masked_by_scheme, many_blocks, fake_vocab, scheme):
    ws = fake_vocab[0]
    m = masked_by_scheme[scheme]
    for b, block in enumerate(many_blocks):
        got = _block(m, b)
        pos = np.array(got["mlm_positions"])
        n = len(block)
        assert len(pos) == -(-3 * n // 20)  # exactly ceil(0.15 n)
        assert np.all(np.diff(pos) > 0) and pos.min() >= 0 and pos.max() < n
        assert got["mlm_labels"] == block[pos].tolist()
        is_masked = np.zeros(n, bool)
        is_masked[pos] = True
        # Spans are exactly the maximal runs of masked positions.
        runs = np.flatnonzero(np.diff(np.concatenate([[0], is_masked.astype(int), [0]])))
        assert got["spans"] == list(zip(runs[0::2].tolist(), (runs[1::2] - 1).tolist(), strict=True))
        if scheme != "subword":
            # Whole words: at most one word is partly masked (the budget cut), and only a prefix of it.
            starts = np.flatnonzero(ws[block] | (np.arange(n) == 0))
            partial = [(s, e) for s, e in zip(starts, np.append(starts[1:], n), strict=True)
                       if 0 < is_masked[s:e].sum() < e - s]  # fmt: skip
            assert len(partial) <= 1
            for s, e in partial:
                k = is_masked[s:e].sum()
                assert is_masked[s : s + k].all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sbo_targets(masked_by_scheme, many_blocks, scheme):
    m = masked_by_scheme[scheme]
    for b, block in enumerate(many_blocks):
        got = _block(m, b)
        n = len(block)
        mlm = set(got["mlm_positions"])
        want = []
        for s, e in got["spans"]:
            if s > 0 and e < n - 1:
                want += [(i, s - 1, e + 1, i - s, int(block[i])) for i in range(s, min(e + 1, s + 15))]
        assert got["sbo"] == want
        for i, left, right, k, _ in got["sbo"]:
            assert i in mlm and 0 <= left < i < right < n and left not in mlm and right not in mlm and k < 15


def test_span_lengths_follow_clipped_geometric(masked_by_scheme):
    drawn = masked_by_scheme["span"].drawn_words
    observed = np.bincount(drawn, minlength=11)[1:]
    assert observed.sum() == drawn.size > 5000
    probs = span_length_probs(0.2, 10)
    assert stats.chisquare(observed, probs * drawn.size).pvalue > ALPHA
    # The test has power: the same counts reject a slightly different law.
    assert stats.chisquare(observed, span_length_probs(0.23, 10) * drawn.size).pvalue < ALPHA


def _units(m, block, b, ws, scheme):
    """(kind of each 80/10/10 decision unit, positions of each unit) of block b."""
    got = _block(m, b)
    pos, kind = np.array(got["mlm_positions"]), np.array(got["mlm_kind"])
    prev_masked = np.isin(pos - 1, pos)
    if scheme == "span":
        first = ~prev_masked
    elif scheme == "subword":
        first = np.ones(len(pos), bool)
    else:
        first = ~prev_masked | ws[block[pos]] | (pos == 0)
    unit_id = np.cumsum(first) - 1
    return kind[first], unit_id, kind


@pytest.mark.parametrize("scheme", SCHEMES)
def test_80_10_10_once_per_unit(masked_by_scheme, many_blocks, fake_vocab, scheme):
    ws = fake_vocab[0]
    m = masked_by_scheme[scheme]
    unit_kinds = []
    for b, block in enumerate(many_blocks):
        kinds, unit_id, kind = _units(m, block, b, ws, scheme)
        assert np.all(kind == kinds[unit_id])  # one decision per unit, shared by all its tokens
        lo = sum(len(x) for x in many_blocks[:b])
        pos = np.array(_block(m, b)["mlm_positions"])
        ids = m.input_ids[lo : lo + len(block)]
        assert np.all(ids[pos[kind == 0]] == MASK_ID)
        assert np.all(ids[pos[kind == 2]] == block[pos[kind == 2]])
        unmasked = np.setdiff1d(np.arange(len(block)), pos)
        assert np.all(ids[unmasked] == block[unmasked])
        unit_kinds.append(kinds)
    counts = np.bincount(np.concatenate(unit_kinds), minlength=3)
    assert counts.sum() > 3000
    assert stats.chisquare(counts, np.array([0.8, 0.1, 0.1]) * counts.sum()).pvalue > ALPHA
    if scheme == "span":  # span_kind is the unit's kind
        assert np.array_equal(np.bincount(m.span_kind, minlength=3), counts)


@pytest.mark.parametrize("mode", ["unigram", "uniform"])
def test_replacements_follow_the_cdf_and_skip_specials(fake_vocab, mode):
    ws, special, counts = fake_vocab
    cdf = replacement_cdf(counts, special, mode)
    blocks = _fake_blocks(800, seed=8, lengths=np.full(800, 400))
    # Every unit random: many replacement draws from a modest number of blocks.
    cfg = MaskingConfig(scheme="subword", mask_token_prob=0.0, random_token_prob=1.0, replacement=mode)
    m = _run(blocks, np.arange(800), ws, cdf, cfg)
    starts = np.repeat(np.arange(800) * 400, np.diff(m.mlm_offsets))
    drawn = m.input_ids[starts + m.mlm_positions]
    observed = np.bincount(drawn, minlength=200)
    assert observed[special].sum() == 0
    probs = np.diff(cdf, prepend=0.0)
    keep = probs > 0
    assert stats.chisquare(observed[keep], probs[keep] * drawn.size).pvalue > ALPHA
    other = replacement_cdf(counts, special, "uniform" if mode == "unigram" else "unigram")
    other_probs = np.diff(other, prepend=0.0)[keep]
    assert stats.chisquare(observed[keep], other_probs * drawn.size).pvalue < ALPHA


def test_replacement_cdf_rules():
    special = np.array([True, False, False, True, False])
    cdf = replacement_cdf(np.array([5, 1, 3, 9, 0]), special, "unigram")
    np.testing.assert_allclose(np.diff(cdf, prepend=0.0), [0, 0.25, 0.75, 0, 0])
    assert cdf[-1] == 1.0 and cdf[2] == 1.0
    np.testing.assert_allclose(np.diff(replacement_cdf(np.zeros(5), special, "uniform"), prepend=0.0),
                               [0, 1 / 3, 1 / 3, 0, 1 / 3])  # fmt: skip
    with pytest.raises(ValueError, match="positive"):
        replacement_cdf(np.array([0, 0, 0, 4, 0]), special, "unigram")
    with pytest.raises(ValueError, match="replacement"):
        replacement_cdf(np.ones(5), special, "zipf")


# ---------------------------------------------------------------------------------------------- determinism


def test_mask_is_a_function_of_seed_epoch_key_only(fake_vocab, many_blocks):
    ws, special, counts = fake_vocab
    cdf = replacement_cdf(counts, special, "unigram")
    blocks = many_blocks[:200]
    keys = np.arange(200) * 31 + 5
    whole = _run(blocks, keys, ws, cdf, MaskingConfig(), seed=3, epoch=1)
    order = np.random.default_rng(9).permutation(200)
    for chunk in np.array_split(order, 7):  # other batch composition and order
        part = _run([blocks[i] for i in chunk], keys[chunk], ws, cdf, MaskingConfig(), seed=3, epoch=1)
        for j, i in enumerate(chunk):
            assert _block(part, j) == _block(whole, i)
    other_epoch = _run(blocks, keys, ws, cdf, MaskingConfig(), seed=3, epoch=2)
    other_seed = _run(blocks, keys, ws, cdf, MaskingConfig(), seed=4, epoch=1)
    for other in (other_epoch, other_seed):
        same = sum(_block(other, i)["mlm_positions"] == _block(whole, i)["mlm_positions"] for i in range(200))
        assert same <= 25  # only tiny blocks (a budget of 1 or 2 over a few tokens) may coincide


# ---------------------------------------------------------------------------------------------- real text


def test_spec_statistics_on_real_text(real_text):
    blocks, ws, cdf, mask_id = real_text
    # n = 510 exactly: consecutive 510-token windows of the tokenized text, masked over 40 epochs.
    stream = np.concatenate(blocks)
    sample = [stream[i : i + 510] for i in range(0, len(stream) - 509, 510)]
    assert len(sample) >= 12
    n_masked, n_spans, n_sbo, span_len = [], [], [], []
    for epoch in range(40):
        m = _run(sample, np.arange(len(sample)), ws, cdf, MaskingConfig(), seed=1, epoch=epoch, mask_id=mask_id)
        n_masked += np.diff(m.mlm_offsets).tolist()
        n_spans += np.diff(m.span_offsets).tolist()
        n_sbo += np.diff(m.sbo_offsets).tolist()
        span_len += (m.span_end - m.span_start + 1).tolist()
        for b, block in enumerate(sample):  # whole words on real WordPiece text too
            pos = np.array(_block(m, b)["mlm_positions"])
            is_masked = np.zeros(len(block), bool)
            is_masked[pos] = True
            starts = np.flatnonzero(ws[block] | (np.arange(len(block)) == 0))
            ends = np.append(starts[1:], len(block))
            partial = sum(0 < is_masked[s:e].sum() < e - s for s, e in zip(starts, ends, strict=True))
            assert partial <= 1
    n = len(sample[0])
    assert set(n_masked) == {-(-3 * n // 20)}  # 77 at n = 510
    # SPEC §2: about 16 merged spans, mean ≈ 5 tokens, SBO ≈ 98% of MLM targets (loose bounds).
    assert 13 <= np.mean(n_spans) <= 19
    assert 4.0 <= np.mean(span_len) <= 6.0
    assert 0.94 <= np.sum(n_sbo) / np.sum(n_masked) <= 1.0


# ---------------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("change", "field"),
    [({"scheme": "ngram"}, "scheme"), ({"mask_ratio": 0.0}, "mask_ratio"), ({"geometric_p": 1.5}, "geometric_p"),
     ({"max_span_words": 0}, "max_span_words"), ({"max_sbo_offset": 300}, "max_sbo_offset"),
     ({"max_sbo_offset": 16}, "max_sbo_offset"), ({"max_sbo_offset": 256}, "max_sbo_offset"),
     ({"mask_token_prob": 0.95}, "mask_token_prob"), ({"replacement": "zipf"}, "replacement")],
)  # fmt: skip
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        MaskingConfig(**change).validate()
    assert MaskingConfig.from_dict(MaskingConfig().to_dict()) == MaskingConfig()
    with pytest.raises(ValueError, match="unknown"):
        MaskingConfig.from_dict({"mask_rato": 0.2})


def test_input_errors(fake_vocab):
    ws, special, counts = fake_vocab
    cdf = replacement_cdf(counts, special, "unigram")
    tokens, offsets = _flat(_fake_blocks(3, seed=10))
    keys = np.arange(3, dtype=np.int64)
    cfg = MaskingConfig()
    ok = dict(tokens=tokens, offsets=offsets, block_keys=keys, word_starts=ws[tokens], cdf=cdf, mask_id=MASK_ID,
              cfg=cfg, seed=0, epoch=0)  # fmt: skip
    bad = [
        ({"tokens": tokens.astype(np.float32)}, "tokens"),
        ({"offsets": offsets[:-1]}, "offsets"),
        ({"block_keys": keys[:2]}, "block_keys"),
        ({"block_keys": keys - 1}, "non-negative"),
        ({"cdf": np.linspace(0.5, 1.0, 200)}, r"\[MASK\]"),
        ({"cdf": cdf[:-1]}, "cdf"),
        ({"tokens": np.where(tokens == tokens[0], 250, tokens).astype(np.uint16)}, "outside the vocab"),
        ({"word_starts": ws}, "one flag per token"),
        ({"seed": -1}, "seed"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            mask_blocks(**{**ok, **change})
