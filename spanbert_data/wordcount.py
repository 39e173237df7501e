"""Word counts of text for vocabulary training, compiled: the counting step at the speed of pass 1 (issue 24).

    lines (UTF-8 bytes) ─▶ per code point: the saved tokenizer's BERT normaliser + pre-tokenizer, as the
          compiled encoder runs them (wordpiece_tables; lines it routes go through `tokenizers` itself)
          ─▶ each word's normalised bytes ─▶ an open-addressing hash table of the distinct words (Numba)
          ─▶ the distinct words in the order first seen, joined by "\\n", and their counts

One pass, no Python object per word, one core (the build counts units on its workers in parallel). The
words and their order are exactly those of `vocab.count_words` (a `collections.Counter` fed the
pre-tokens of `tokenizers`' own normaliser and pre-tokenizer): the per-code-point tables give the
pre-tokens of `tokenizers` (tests/data/test_wordpiece.py), a line they cannot match exactly is handed to
`tokenizers` at its place in the sequence, and the table keeps first-seen order as a dict does. The
vocabulary trained on the counts is therefore the same file, byte for byte (tests/data/test_wordcount.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator

import numpy as np
from numba import njit

from spanbert_data.tokenizer import bert_tokenizer
from spanbert_data.wordpiece import _item, _items, _next_code, _put_utf8, line_bytes
from spanbert_data.wordpiece_merges import (
    _EMPTY,
    _FNV_OFFSET,
    _FNV_PRIME,
    _bytes_hash,
    _grow,
    _hashed_slot,
    _token_slot,
)
from spanbert_data.wordpiece_tables import ISOLATE, REMOVED, ROUTE, SPACE, SPACE_CLASS, WORD, char_tables

BATCH_CHARS = 1 << 22  # characters counted per call: large enough to amortise the call, small enough for its buffers


# ------------------------------------------------------------------------------------ the table of words
# Word t is arena[off[t]:off[t + 1]], seen counts[t] times; a slot of `table` holds a word id or _EMPTY
# (wordpiece_merges' token table: open addressing, linear probing, FNV-1a of the bytes; load factor at most 1/2).
# A word is looked up after it is written at the arena's end, off[n]: when it is new it is already in place.
@njit(cache=True)
def _intern(table, off, arena, counts, n, lo, hi, h):
    """(id, new n) of the word arena[lo:hi] written at the arena's end (lo = off[n]); added when new."""
    slot = _hashed_slot(table, off, arena, arena, lo, hi, h)
    t = table[slot]
    if t == _EMPTY:
        t = n
        table[slot] = t
        counts[t] = 0
        off[n + 1] = hi
        n += 1
    return t, n


@njit(cache=True)
def _put(arena, pos, cp, h):
    """Append code point cp as UTF-8 at arena[pos:], folding its bytes into the FNV-1a hash h."""
    if cp < 0x80:
        arena[pos] = cp
        return pos + 1, (h ^ np.uint64(cp)) * _FNV_PRIME
    end = _put_utf8(arena, pos, cp)
    for k in range(pos, end):
        h = (h ^ np.uint64(arena[k])) * _FNV_PRIME
    return end, h


@njit(cache=True)
def _reserve(table, off, arena, counts, n, words, nbytes):
    """The state with room for `words` more distinct words of `nbytes` more bytes (grown, rehashed as needed)."""
    if off[n] + nbytes > len(arena):
        arena = _grow(arena, off[n] + nbytes)
    if n + words + 1 > len(off):
        off = _grow(off, n + words + 1)
        counts = _grow(counts, n + words + 1)
    if 2 * (n + words) > len(table):
        size = len(table)
        while 2 * (n + words) > size:
            size *= 2
        table = np.full(size, _EMPTY, dtype=np.int32)
        for u in range(n):
            table[_token_slot(table, off, arena, arena, off[u], off[u + 1])] = u
    return table, off, arena, counts


@njit(cache=True)
def _add(data, offsets, table, off, arena, counts, n):
    """Count the words data[offsets[k]:offsets[k + 1]]."""
    table, off, arena, counts = _reserve(table, off, arena, counts, n, len(offsets) - 1, offsets[-1] - offsets[0])
    for k in range(len(offsets) - 1):
        size = offsets[k + 1] - offsets[k]
        lo = off[n]
        arena[lo : lo + size] = data[offsets[k] : offsets[k + 1]]
        t, n = _intern(table, off, arena, counts, n, lo, lo + size, _bytes_hash(arena, lo, lo + size))
        counts[t] += 1
    return table, off, arena, counts, n


# ----------------------------------------------------------------------------------------- the counter
@njit(cache=True)
def _count_lines(buf, starts, ends, first, tables, per_byte, table, off, arena, counts, n, line_words):
    """Count the words of lines first.. (byte ranges starts..ends of buf). Stops at a line holding a ROUTE
    character, with the table as it was before that line, and returns its index (for `tokenizers` to
    split) with the state; returns len(starts) when every line is counted."""
    ascii_codes, block_index, blocks, pool = tables
    for li in range(first, len(starts)):
        i, end = starts[li], ends[li]
        words_most = per_byte[0] * (end - i) + 1  # the line's words at most, and their bytes
        if len(line_words) < words_most:
            line_words = np.empty(2 * words_most, dtype=np.int32)
        table, off, arena, counts = _reserve(table, off, arena, counts, n, words_most, per_byte[1] * (end - i))
        n_line = n
        m = 0  # the line's words so far (their ids in line_words; counted once the line is complete)
        lo = pos = off[n]  # the current word is arena[lo:pos], its hash h
        h = _FNV_OFFSET
        route = False
        while i < end:
            c = buf[i]
            if c < 0x80:  # the common case, kept tight: an ASCII word character, space or punctuation (3x faster)
                code = ascii_codes[c]
                if code >= 0:
                    arena[pos] = code
                    pos += 1
                    h = (h ^ np.uint64(code)) * _FNV_PRIME
                    i += 1
                    continue
                if code == SPACE or code == ISOLATE:
                    i += 1
                    if pos > lo:
                        line_words[m], n = _intern(table, off, arena, counts, n, lo, pos, h)
                        m += 1
                        lo = pos = off[n]
                        h = _FNV_OFFSET
                    if code == ISOLATE:  # punctuation: a word of its own
                        arena[pos] = c
                        line_words[m], n = _intern(table, off, arena, counts, n, lo, pos + 1,
                                                   (_FNV_OFFSET ^ np.uint64(c)) * _FNV_PRIME)  # fmt: skip
                        m += 1
                        lo = pos = off[n]
                    continue
            cp, code, i = _next_code(buf, i, ascii_codes, block_index, blocks)
            if code >= 0:  # a word character
                pos, h = _put(arena, pos, code, h)
                continue
            if code == REMOVED:
                continue
            if code == ROUTE:
                route = True
                break
            p, n_items = _items(code, pool)  # SPACE, ISOLATE or a sequence: word characters, spaces, punctuation
            for k in range(n_items):
                cls, d = _item(code, cp, pool, p, k)
                if cls == WORD:
                    pos, h = _put(arena, pos, d, h)
                    continue
                if pos > lo:
                    line_words[m], n = _intern(table, off, arena, counts, n, lo, pos, h)
                    m += 1
                    lo = pos = off[n]
                    h = _FNV_OFFSET
                if cls != SPACE_CLASS:  # punctuation: a word of its own
                    pos, h = _put(arena, pos, d, h)
                    line_words[m], n = _intern(table, off, arena, counts, n, lo, pos, h)
                    m += 1
                    lo = pos = off[n]
                    h = _FNV_OFFSET
        if route:  # undo the line: its new words go, newest first, which restores the table exactly
            for t in range(n - 1, n_line - 1, -1):
                table[_token_slot(table, off, arena, arena, off[t], off[t + 1])] = _EMPTY
            return li, table, off, arena, counts, n_line, line_words
        if pos > lo:
            line_words[m], n = _intern(table, off, arena, counts, n, lo, pos, h)
            m += 1
        for j in range(m):
            counts[line_words[j]] += 1
    return len(starts), table, off, arena, counts, n, line_words


class WordCounter:
    """Distinct words (UTF-8 bytes) and their counts, in the order first seen."""

    def __init__(self) -> None:
        self._table = np.full(1 << 12, _EMPTY, dtype=np.int32)
        self._off = np.zeros(1 << 11, dtype=np.int64)
        self._arena = np.empty(1 << 14, dtype=np.uint8)
        self._counts = np.zeros(1 << 11, dtype=np.int64)
        self._n = 0
        self._line_words = np.empty(1 << 10, dtype=np.int32)

    def add(self, data: np.ndarray, offsets: np.ndarray) -> None:
        """Count the words data[offsets[k]:offsets[k + 1]] (UTF-8)."""
        self._table, self._off, self._arena, self._counts, self._n = _add(
            data, offsets, self._table, self._off, self._arena, self._counts, self._n)  # fmt: skip

    def add_lines(self, lines: list[str]) -> None:
        """Count the words of lines (split as vocab.count_words splits them), in order."""
        if not lines:
            return
        splitter = _splitter()
        buf, starts, ends = line_bytes(lines)
        li = 0
        while li < len(lines):
            li, self._table, self._off, self._arena, self._counts, self._n, self._line_words = _count_lines(
                buf, starts, ends, li, splitter.tables, splitter.per_byte, self._table, self._off, self._arena,
                self._counts, self._n, self._line_words)  # fmt: skip
            if li < len(lines):  # a line the tables route: `tokenizers` splits it, in its place
                words = splitter.words(lines[li])
                data = np.frombuffer(b"".join(words), dtype=np.uint8)
                self.add(data, np.concatenate([[0], np.cumsum([len(w) for w in words], dtype=np.int64)]))
                li += 1

    def counts(self) -> np.ndarray:
        return self._counts[: self._n].copy()

    def joined(self) -> str:
        """The distinct words joined by "\\n" (never inside a word: it is whitespace), in first-seen order."""
        n = self._n
        if n == 0:
            return ""
        off = self._off[: n + 1]
        out = np.full(int(off[n]) + n - 1, 10, dtype=np.uint8)  # word bytes, a newline after each but the last
        lengths = np.diff(off)
        dest = np.arange(int(off[n])) + np.repeat(np.arange(n), lengths)  # each byte moves right by its word index
        out[dest] = self._arena[: off[n]]
        return out.tobytes().decode("utf-8")


class _Splitter:
    """The cased BERT normaliser + pre-tokenizer of the tokenizer that vocab.train_from_counts saves: its
    per-code-point tables for the kernel, and `tokenizers` itself for the lines the tables route."""

    def __init__(self) -> None:
        tok = bert_tokenizer({"[UNK]": 0}, lowercase=False)  # the pipeline of vocab.train_from_counts' tokenizer
        self.normalizer, self.pre_tokenizer = tok.normalizer, tok.pre_tokenizer
        chars = char_tables(tok, json.loads(tok.to_str()))
        self.tables = (chars.ascii, chars.block_index, chars.blocks, chars.pool)
        words = int(np.ceil(max(1.0, chars.tokens_per_byte)))
        self.per_byte = (words, 4 * words)  # words, and UTF-8 bytes of words, per byte of input at most

    def words(self, line: str) -> list[bytes]:
        return [w.encode("utf-8") for w, _ in self.pre_tokenizer.pre_tokenize_str(self.normalizer.normalize_str(line))]


@functools.cache
def _splitter() -> _Splitter:
    return _Splitter()


def batches(lines: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive lines in lists of about `chars` characters (the last may be shorter; none is empty)."""
    batch: list[str] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_lines(lines: Iterable[str]) -> tuple[str, np.ndarray]:
    """(distinct words joined by "\\n" in first-seen order, their counts int64) of lines, split as the saved
    tokenizer splits them. Raises UnicodeEncodeError for a str that is not valid Unicode (lone surrogates)."""
    counter = WordCounter()
    for batch in batches(lines, BATCH_CHARS):
        counter.add_lines(batch)
    return counter.joined(), counter.counts()
