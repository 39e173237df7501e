"""Builds with a byte-level BPE, a Unigram/Metaspace and a converted SentencePiece tokenizer (issue 22): every
masked span is a run of whole words, re-derived here independently from `tokenizers`' word ids; the span-length
law and 80/10/10 hold on their words; the manifest has each tokenizer's roles; `inspect` reads as text."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from bench.subword_tokenizers import FAMILIES, family_tokenizer, sample_documents, write_corpus
from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig, MaskingConfig
from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.errors import BuildError
from spanbert_data.inspect import dataset_stats, show_examples
from spanbert_data.masking import mask_blocks, replacement_cdf, span_length_probs
from spanbert_data.packing import record_batch_columns
from spanbert_data.rows import TokenStore
from spanbert_data.shards import load_manifest, read_arrow_file
from spanbert_data.tokenizer import load_tokenizer
from spanbert_data.words import word_ids_starts

ALPHA = 1e-4


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """family -> (dataset directory, the tokenizer path given to the build), on 12 Wikipedia articles."""
    root = tmp_path_factory.mktemp("subword")
    docs = sample_documents(12)
    corpus = write_corpus(root / "corpus.txt", docs)
    lines = [line for d in docs for line in d]
    out = {}
    for name in FAMILIES:
        path = family_tokenizer(name, lines, root)
        build_dataset(BuildConfig(corpus=corpus, out=root / name, tokenizer=path, max_seq_len=128,
                                  valid_fraction=0.1), log=lambda _m: None)  # fmt: skip
        out[name] = (root / name, path)
    return out


def independent_words(dataset, tokenizer_path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, word starts, first token of each global block) of the whole corpus in reading order, from
    `tokenizers`' word ids; the store's blocks tile that stream."""
    tok = load_tokenizer(tokenizer_path)
    corpus = dataset.parent / "corpus.txt"
    lines = [line for d in read_documents(corpus, corpus.parent, CorpusStats()) for line in d.lines]
    encodings = tok._tok.encode_batch(lines, add_special_tokens=False)
    ids = np.array([i for e in encodings for i in e.ids], dtype=np.int64)
    store = TokenStore(dataset, load_manifest(dataset)["store"])
    blocks = np.arange(store.n_blocks)
    flat, offsets, stored = store.gather(blocks)
    np.testing.assert_array_equal(flat, ids)  # the store is the corpus's tokens, in order
    starts = word_ids_starts(encodings)
    np.testing.assert_array_equal(stored, starts)  # what pass 1 stored is what tokenizers says
    return ids, starts, offsets


@pytest.mark.parametrize("family", FAMILIES)
def test_every_masked_span_is_whole_words(built, family):
    """Re-derived from the shards: per block, at most one word is partly masked (the span that met the budget,
    SPEC §2) and then only a prefix of it; every other masked word is masked whole."""
    dataset, path = built[family]
    ids, starts, offsets = independent_words(dataset, path)
    manifest = load_manifest(dataset)
    masked = np.zeros(len(ids), dtype=bool)
    seen = np.zeros(len(offsets) - 1, dtype=bool)
    for entry in manifest["shards"]["train"] + manifest["shards"]["valid"]:
        cols = record_batch_columns(read_arrow_file(dataset / entry["path"]))
        ex_off, ex_len = cols["example_lengths"]
        block_ids = cols["block_ids"][1]
        pos_off, pos = cols["mlm_positions"]
        at = []  # stream index of every MLM target, in the shard's order
        for r in range(len(cols["input_ids"])):
            slot = 0
            row_pos = pos[pos_off[r] : pos_off[r + 1]].astype(np.int64)
            for j in range(ex_off[r], ex_off[r + 1]):
                b = block_ids[j]
                mine = row_pos[(row_pos > slot) & (row_pos < slot + ex_len[j] - 1)] - slot - 1
                at.append(offsets[b] + mine)
                seen[b] = True
                slot += int(ex_len[j])
        at = np.concatenate(at)
        masked[at] = True
        np.testing.assert_array_equal(cols["mlm_labels"][1], ids[at])
        flags = cols["mlm_word_starts"][1].astype(bool)  # every family but WordPiece stores them, for evaluation
        block_first = np.isin(at, offsets[:-1])
        np.testing.assert_array_equal(flags | block_first, starts[at] | block_first)
    assert seen.all()
    partial_blocks = 0
    for b in range(len(offsets) - 1):
        lo, hi = offsets[b], offsets[b + 1]
        s = starts[lo:hi].copy()
        s[0] = True  # a block starts a word (SPEC §2: the anchor never steps back before the block)
        bounds = np.append(np.flatnonzero(s), hi - lo)
        m = masked[lo:hi]
        partial = [(a, e) for a, e in zip(bounds[:-1], bounds[1:], strict=True) if 0 < m[a:e].sum() < e - a]
        assert len(partial) <= 1, (family, b)
        for a, e in partial:
            assert m[a : a + m[a:e].sum()].all(), (family, b)  # a prefix of the word
        partial_blocks += len(partial)
        assert m.sum() == -(-3 * (hi - lo) // 20)  # the exact budget
    assert partial_blocks < len(offsets) - 1  # most blocks end their last span on a word boundary too
    assert (starts == 0).sum() > len(starts) // 5  # many words of several tokens: the test can fail


@pytest.mark.parametrize("family", FAMILIES)
def test_span_length_law_and_80_10_10_on_its_words(built, family):
    dataset, path = built[family]
    store = TokenStore(dataset, load_manifest(dataset)["store"])
    tokens, offsets, starts = store.gather(np.arange(store.n_blocks))
    tok = load_tokenizer(path)
    cdf = replacement_cdf(np.bincount(tokens, minlength=tok.vocab_size), tok.is_special, "unigram")
    drawn, kinds = [], []
    for epoch in range(8):
        m = mask_blocks(tokens, offsets, np.arange(store.n_blocks), starts, cdf, tok.special_ids["mask"],
                        MaskingConfig(), 3, epoch, diagnostics=True)  # fmt: skip
        drawn.append(m.drawn_words)
        kinds.append(m.span_kind)
    observed = np.bincount(np.concatenate(drawn), minlength=11)[1:]
    assert observed.sum() > 5000
    assert stats.chisquare(observed, span_length_probs(0.2, 10) * observed.sum()).pvalue > ALPHA
    assert stats.chisquare(observed, span_length_probs(0.24, 10) * observed.sum()).pvalue < ALPHA
    counts = np.bincount(np.concatenate(kinds), minlength=3)
    assert stats.chisquare(counts, np.array([0.8, 0.1, 0.1]) * counts.sum()).pvalue > ALPHA


def test_manifest_roles_and_what_inspect_shows(built):
    roberta = {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    for family, (dataset, _) in built.items():
        manifest = load_manifest(dataset)
        ids = manifest["tokenizer"]["special_ids"]
        if family != "sentencepiece":
            assert ids == roberta
        else:
            assert ids == {**roberta, "mask": manifest["tokenizer"]["vocab_size"] - 1}  # XLM-R's last id
        assert dataset_stats(dataset)["masked_fraction"] > 0.14


@pytest.mark.parametrize("family", ["bpe", "unigram"])
def test_inspect_examples_read_as_the_text(built, family):
    """Without its marks, an example `inspect` shows is the decoded text of the block: byte-level pieces and
    `▁` come out as spaces, never as Ġ or ▁."""
    dataset, path = built[family]
    shown = show_examples(dataset, n=3)
    assert "Ġ" not in shown and "\u2581" not in shown and "«" in shown
    tok = load_tokenizer(path)
    cols = record_batch_columns(read_arrow_file(dataset / load_manifest(dataset)["shards"]["train"][0]["path"]))
    texts = [line for line in shown.split("\n") if not line.startswith("--- row")]
    ids = cols["input_ids"][0].astype(np.int64)
    pos_off, pos = cols["mlm_positions"]
    ids[pos[pos_off[0] : pos_off[1]]] = cols["mlm_labels"][1][pos_off[0] : pos_off[1]]
    first = int(cols["example_lengths"][1][cols["example_lengths"][0][0]])
    plain = re.sub(r"«([^«»|]*)(\|[^«»]*)?»", r"\1", texts[0])
    assert plain == tok.decode(ids[1 : first - 1])


def test_a_tokenizer_without_words_is_refused_for_span_masking(built, tmp_path):
    import json

    spec = json.loads(built["unigram"][1].read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = None
    path = tmp_path / "no-words.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    corpus = built["unigram"][0].parent / "corpus.txt"
    with pytest.raises(BuildError, match="keeps each line whole.*--scheme subword"):
        build_dataset(BuildConfig(corpus=corpus, out=tmp_path / "ds", tokenizer=path), log=lambda _m: None)
