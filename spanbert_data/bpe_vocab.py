"""Deterministic byte-level BPE vocabulary training (`vocab --model bpe`, `build --vocab-model bpe`; the rule is in
docs/FORMAT.md, "Vocabulary").

The same pipeline as the WordPiece trainer (vocab.py), over bytes:

    units ─▶ [count_unit_byte_words, one task per unit, any process] word counts ─▶ summed in unit order
          ─▶ train_bpe_from_counts: 256 byte tokens + merge loop (wordpiece_merges.py, strip=0) ─▶ tokenizer.json

Words are the pieces of GPT-2's byte-level pre-tokenizer (bytelevel.py, the scan that also finds word starts
in pass 1), counted per unit in a compiled hash table. The merge loop is the WordPiece trainer's, with ties
broken by the merged bytes, so the file is a pure function of the corpus bytes and the options. The result
is a RoBERTa-style tokenizer.json: `<s> <pad> </s> <unk> <mask>` at ids 0-4, the 256 bytes at 5-260 in byte
order, then the merges' tokens; ByteLevel pre-tokenizer and decoder, `<s> A </s>` templates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from spanbert_data.bytelevel import bytes_to_unicode, split_words
from spanbert_data.corpus import CorpusStats
from spanbert_data.inputs import Corpus
from spanbert_data.tokenizer import SubwordTokenizer
from spanbert_data.unit_reader import UnitLines
from spanbert_data.units import Unit
from spanbert_data.wordcount import batches
from spanbert_data.wordpiece_merges import _EMPTY, _token_slot, merge_loop

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's, ids 0-4
_BATCH_CHARS = 1 << 20  # text split and counted at once


@njit(cache=True)
def _count(buf, ranges, table, word_off, word_bytes, counts, n_words):
    """Count the byte strings buf[lo:hi] of `ranges` into the open-addressing `table` of distinct words (spelled
    word_bytes[word_off[w]:word_off[w+1]]); the caller leaves room for every range being new. Returns n_words."""
    for r in range(ranges.shape[0]):
        lo, hi = ranges[r, 0], ranges[r, 1]
        slot = _token_slot(table, word_off, word_bytes, buf, lo, hi)
        w = table[slot]
        if w == _EMPTY:
            w = n_words
            start = word_off[w]
            word_bytes[start : start + hi - lo] = buf[lo:hi]
            word_off[w + 1] = start + hi - lo
            table[slot] = w
            counts[w] = 0
            n_words += 1
        counts[w] += 1
    return n_words


@njit(cache=True)
def _rehash(size, word_off, word_bytes, n_words):
    table = np.full(size, _EMPTY, dtype=np.int32)
    for w in range(n_words):
        table[_token_slot(table, word_off, word_bytes, word_bytes, word_off[w], word_off[w + 1])] = w
    return table


class ByteWordCounter:
    """Distinct pre-tokenizer pieces and their counts, in the order first seen (so a pure function of the text)."""

    def __init__(self) -> None:
        self.n = 0
        self.table = np.full(1 << 16, _EMPTY, dtype=np.int32)
        self.off = np.zeros(1 << 15, dtype=np.int64)
        self.bytes = np.zeros(1 << 20, dtype=np.uint8)
        self.counts = np.zeros(1 << 15, dtype=np.int64)

    def add(self, lines: list[str]) -> None:
        buf, ranges = split_words(lines)
        need = self.n + len(ranges)
        if 2 * need > len(self.table):
            size = len(self.table)
            while 2 * need > size:
                size *= 2
            self.table = _rehash(size, self.off, self.bytes, self.n)
        if need + 1 > len(self.off):
            self.off = np.concatenate([self.off, np.zeros(need + 1, np.int64)])
            self.counts = np.concatenate([self.counts, np.zeros(need + 1, np.int64)])
        if self.off[self.n] + len(buf) > len(self.bytes):
            self.bytes = np.concatenate([self.bytes, np.zeros(int(self.off[self.n]) + len(buf), np.uint8)])
        self.n = _count(buf, ranges, self.table, self.off, self.bytes, self.counts, self.n)

    def result(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        """(the words' bytes back to back, int64 offsets of length n + 1, int64 counts)."""
        off = self.off[: self.n + 1].copy()
        return self.bytes[: off[-1]].tobytes(), off, self.counts[: self.n].copy()


@dataclass
class ByteWordCounts:
    """The byte-level word counts of one unit, compact for pickling (vocab.WordCounts' twin for bytes)."""

    unit: str
    data: bytes  # the distinct words back to back
    offsets: np.ndarray  # int64, word k is data[offsets[k]:offsets[k + 1]]
    counts: np.ndarray  # int64, one per word
    documents: int
    lines: int
    chars: int
    warnings: list[str]

    def items(self):
        off = self.offsets.tolist()
        return zip((self.data[a:b] for a, b in zip(off, off[1:], strict=False)), self.counts.tolist(), strict=True)


def count_byte_words(lines) -> ByteWordCounter:
    """The pieces of an iterable of lines, counted in batches of about a MB of text."""
    counter = ByteWordCounter()
    for batch in batches(lines, _BATCH_CHARS):
        counter.add(batch)
    return counter


def count_unit_byte_words(corpus: Corpus, unit: Unit, char_budget: int | None = None) -> ByteWordCounts:
    """Count the byte-level words of one unit (a task: top-level and picklable); `char_budget` as in
    vocab.count_unit_words. vocab.merge_counts sums them."""
    stats = CorpusStats()
    warnings: list[str] = []
    lines = UnitLines(corpus, unit, stats, warnings.append, char_budget)
    data, offsets, counts = count_byte_words(lines).result()
    return ByteWordCounts(unit.key, data, offsets, counts, stats.documents, stats.lines, lines.chars, warnings[:100])


def train_bpe_from_counts(counts: dict[bytes, int], vocab_size: int, min_frequency: int = 2) -> SubwordTokenizer:
    """A byte-level BPE tokenizer learnt from word counts (module docstring): at most vocab_size entries (fewer
    when the merges run out; the specials and the 256 bytes always)."""
    base = len(SPECIALS)
    if not isinstance(vocab_size, int) or vocab_size <= base + 256:
        raise ValueError(f"vocab_size must be an integer > {base + 256} (specials and bytes), got {vocab_size!r}")
    words = list(counts)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    wstart = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=wstart[1:])
    wcount = np.fromiter(counts.values(), dtype=np.int64, count=len(words))
    sym = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int32) + base
    spelled = [s.encode() for s in SPECIALS] + [bytes([b]) for b in range(256)]
    tok_off = np.zeros(len(spelled) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in spelled], out=tok_off[1:])
    tok_bytes = np.frombuffer(b"".join(spelled), dtype=np.uint8).copy()
    tok_off, tok_bytes, n_tok, merges = merge_loop(sym, wstart, wcount, tok_off, tok_bytes, len(spelled), vocab_size,
                                                   min_frequency, 0)  # fmt: skip
    to_char = bytes_to_unicode()
    blob = tok_bytes.tobytes()
    strings = list(SPECIALS) + ["".join(to_char[b] for b in blob[tok_off[i] : tok_off[i + 1]])
                                for i in range(base, n_tok)]  # fmt: skip
    vocab = {s: i for i, s in enumerate(strings)}
    assert len(vocab) == n_tok, "duplicate token in a trained vocabulary"
    return SubwordTokenizer(bpe_tokenizer(vocab, [(strings[a], strings[b]) for a, b, _ in merges.tolist()]),
                            "<trained byte-level BPE>")  # fmt: skip


def bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """RoBERTa's byte-level pipeline around a vocabulary and its merges: ByteLevel pre-tokenizer (no prefix space)
    and decoder, the specials as special added tokens (`<mask>` taking the space before it, as RoBERTa's), and
    `<s> A </s>` / `<s> A </s></s> B </s>` templates."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == "<mask>") for t in SPECIALS])
    tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                      trim_offsets=True, add_prefix_space=False)  # fmt: skip
    return tok
